"""Receive buffering: a frame leaves as soon as all its packets are in, in order, never twice."""

from __future__ import annotations

import logging

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

from realtime.rtp_buffers import PromptJitterBuffer, use_prompt_jitter_buffers


def _packet(sequence: int, timestamp: int, marker: bool, data: bytes) -> RtpPacket:
    packet = RtpPacket(payload_type=96, marker=int(marker), sequence_number=sequence, timestamp=timestamp)
    packet._data = data  # type: ignore[attr-defined]  # what the receiver's depayloader sets
    return packet


def test_a_video_frame_leaves_with_its_marker_packet_not_with_the_next_frame() -> None:
    buffer = PromptJitterBuffer(capacity=64, is_video=True)
    assert buffer.add(_packet(100, 3000, False, b"a"))[1] is None
    frame = buffer.add(_packet(101, 3000, True, b"b"))[1]
    assert frame is not None and frame.data == b"ab" and frame.timestamp == 3000
    assert buffer.add(_packet(102, 6600, True, b"c"))[1].data == b"c"  # type: ignore[union-attr]


def test_a_reordered_frame_leaves_when_its_missing_packet_arrives() -> None:
    buffer = PromptJitterBuffer(capacity=64, is_video=True)
    assert buffer.add(_packet(200, 90, True, b"1"))[1].data == b"1"  # type: ignore[union-attr]
    assert buffer.add(_packet(203, 180, True, b"d"))[1] is None  # 201 and 202 missing
    assert buffer.add(_packet(201, 180, False, b"b"))[1] is None
    frame = buffer.add(_packet(202, 180, False, b"c"))[1]
    assert frame is not None and frame.data == b"bcd"


def test_audio_packets_leave_one_by_one_in_order() -> None:
    buffer = PromptJitterBuffer(capacity=16, is_video=False)
    assert buffer.add(_packet(10, 0, False, b"x"))[1].data == b"x"  # type: ignore[union-attr]
    assert buffer.add(_packet(12, 1920, False, b"z"))[1] is None  # waits for 11
    assert buffer.add(_packet(11, 960, False, b"y"))[1].data == b"y"  # type: ignore[union-attr]
    assert buffer.add(_packet(13, 2880, False, b"w"))[1].data == b"z"  # type: ignore[union-attr]
    assert buffer.add(_packet(14, 3840, False, b"v"))[1].data == b"w"  # type: ignore[union-attr]


def test_audio_after_a_lost_packet_does_not_stay_behind() -> None:
    buffer = PromptJitterBuffer(capacity=16, is_video=False)
    assert buffer.add(_packet(0, 0, False, b"0"))[1] is not None
    for sequence in range(2, 18):  # 1 is lost: 2.. wait until the buffer overflows
        out = buffer.add(_packet(sequence, 960 * sequence, False, bytes([sequence])))[1]
    assert out is not None
    # The overflow skipped the gap; at most one packet is left waiting, and it goes out next.
    latest = buffer.add(_packet(18, 960 * 18, False, bytes([18])))[1]
    assert latest is not None and latest.data[0] >= 17


async def test_every_receiver_of_a_connection_gets_the_prompt_buffer() -> None:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.addTransceiver("video", direction="recvonly")
    use_prompt_jitter_buffers(pc)
    buffers = [t.receiver._RTCRtpReceiver__jitter_buffer for t in pc.getTransceivers()]  # type: ignore[attr-defined]
    assert all(isinstance(buffer, PromptJitterBuffer) for buffer in buffers)
    await pc.close()


async def test_an_aiortc_without_the_private_attribute_keeps_its_own_buffers_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    receiver = pc.getTransceivers()[0].receiver
    own = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    del receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]  # as a release without it
    with caplog.at_level(logging.WARNING, logger="realtime.rtp_buffers"):
        use_prompt_jitter_buffers(pc)
    assert "receive buffering keeps its delay" in caplog.text
    assert not hasattr(receiver, "_RTCRtpReceiver__jitter_buffer")
    receiver._RTCRtpReceiver__jitter_buffer = own  # type: ignore[attr-defined]
    await pc.close()
