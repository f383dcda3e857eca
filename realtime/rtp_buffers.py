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
    """aiortc's jitter buffer, releasing each frame as soon as it is complete."""

    def __init__(self, capacity: int, is_video: bool) -> None:
        super().__init__(capacity=capacity, prefetch=0, is_video=is_video)

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli_flag, frame = super().add(packet)
        if frame is None:
            frame = self._pop_complete_frame()
        return pli_flag, frame

    def _pop_complete_frame(self) -> JitterFrame | None:
        """The oldest frame if all its packets are in (removed from the buffer), else None."""
        if self._origin is None:
            return None
        packets: list[RtpPacket] = []
        for count in range(self._capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
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
