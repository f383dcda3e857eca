"""Receive-side RTP buffering without added delay, for aiortc receivers.

aiortc's receivers hold media back: audio until 4 more packets have arrived (80 ms of 20 ms
packets), video until the first packet of the *next* frame arrives (a whole frame interval, 40 ms
at 25 fps). Browsers do neither. This server already absorbs input jitter in its session
(``StreamSettings.input_jitter_ms``), and a measuring client must see frames when they are
complete, so both swap in ``PromptJitterBuffer``: a frame leaves as soon as all its packets are in
(audio: each packet; video: up to the packet carrying the RTP marker bit, which ends a frame).
Order, loss handling and capacity are aiortc's own.
"""

from __future__ import annotations

import logging

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

logger = logging.getLogger(__name__)

AUDIO_CAPACITY = 16  # packets, as aiortc
VIDEO_CAPACITY = 512
_PRIVATE_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"


class PromptJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, releasing each frame as soon as it is complete.

    aiortc's receiver takes one frame per arriving packet, so frames completed together (after
    a reordered or lost packet) would leave one packet late each, for good. Audio therefore
    drops all but the newest ``MAX_AUDIO_BACKLOG`` complete packets (a short gap, no lasting
    delay); video keeps every frame (the decoder needs them) and catches up as packets arrive.
    """

    MAX_AUDIO_BACKLOG = 2

    def __init__(self, capacity: int, is_video: bool) -> None:
        super().__init__(capacity=capacity, prefetch=0, is_video=is_video)

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        if not self._is_video:
            complete = self._complete_run()
            if complete > self.MAX_AUDIO_BACKLOG:
                self.remove(complete - self.MAX_AUDIO_BACKLOG)
        return self._pop_complete_frame()

    def _packet_at(self, count: int) -> RtpPacket | None:
        assert self._origin is not None
        return self._packets[(self._origin + count) % self._capacity]

    def _complete_run(self) -> int:
        """How many packets from the oldest on are present without a gap."""
        if self._origin is None:
            return 0
        count = 0
        while count < self._capacity and self._packet_at(count) is not None:
            count += 1
        return count

    def _pop_complete_frame(self) -> JitterFrame | None:
        """The oldest frame if all its packets are in (removed from the buffer), else None."""
        if self._origin is None:
            return None
        packets: list[RtpPacket] = []
        for count in range(self._capacity):
            packet = self._packet_at(count)
            if packet is None or (packets and packet.timestamp != packets[0].timestamp):
                return None
            packets.append(packet)
            if packet.marker or not self._is_video:
                self.remove(len(packets))
                data = b"".join(p._data for p in packets)  # type: ignore[attr-defined]
                return JitterFrame(data=data, timestamp=packets[0].timestamp)
        return None


def use_prompt_jitter_buffers(pc: RTCPeerConnection) -> None:
    """Give every receiver of ``pc`` a ``PromptJitterBuffer`` (before media flows).

    Uses an aiortc private attribute; with an aiortc that lacks it, receivers keep their own
    buffers (more delay, same correctness) and a warning says so.
    """
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if not hasattr(receiver, _PRIVATE_ATTRIBUTE):
            logger.warning("this aiortc has no %s: receive buffering keeps its delay", _PRIVATE_ATTRIBUTE)
            return
        is_video = transceiver.kind == "video"
        capacity = VIDEO_CAPACITY if is_video else AUDIO_CAPACITY
        setattr(receiver, _PRIVATE_ATTRIBUTE, PromptJitterBuffer(capacity, is_video))
