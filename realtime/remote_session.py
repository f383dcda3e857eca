"""A call's streaming session as the server process sees it: the session itself runs in a render
worker (``realtime.render_worker``); this is its handle on the event loop that runs the call.

It offers what a ``PeerSession`` uses of a ``StreamingSession`` — ``push_audio``, the paced
``frames()``, ``stats`` and ``close`` — and turns them into messages to the worker. The worker's
pipe is read on a thread of the server's ``RenderWorker``, which copies each frame's image out of
the call's ring at once and hands the frame to this object's loop; everything here runs on that
loop. If the worker dies, ``frames()`` raises ``RenderWorkerLost`` within a moment: the call ends
with that reason, it never hangs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.errors import InputError, StableFaceError
from engines.timebase import SAMPLE_RATE_HZ
from realtime.audio_input import AudioInput
from realtime.frame_ring import FrameRing
from realtime.worker_messages import AvatarInfo, CallAudio, CloseCall, Frame, StartCall, ToWorker

logger = logging.getLogger(__name__)
RING_SLOTS = 8  # 320 ms of frames: the reader copies each one within a millisecond or two


class RenderWorkerLost(StableFaceError):
    """The render worker of a call died (it is being restarted; the call cannot continue)."""


class RenderFailed(StableFaceError):
    """The render worker could not go on with this call (its other calls go on)."""


@dataclass
class RemoteStats:
    """A call's counters: the frames this process received, and the worker's last report."""

    latency_ms: float
    frames_out: int = 0
    frames_skipped: int = 0
    frames_lost: int = 0  # announced but overwritten in the ring before they were read
    lag_ms: float = 0.0
    reported: dict[str, Any] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """The worker's snapshot (``SessionStats.snapshot``) with this side's current counters."""
        return {
            "stage_ms": {},
            "render_slack_ms": {},
            **self.reported,
            "latency_ms": self.latency_ms,
            "frames_out": self.frames_out,
            "frames_skipped": self.frames_skipped,
            "frames_lost": self.frames_lost,
            "lag_ms": self.lag_ms,
        }


@dataclass(frozen=True)
class CallFrame:
    """One paced output frame of a call, as the server process sends it.

    Attributes:
        index: k, the output frame number; its presentation time is ``k / 25`` s.
        image: (H, W, 3) uint8 RGB.
        audio: (640,) float32 16 kHz samples that play with it.
        skipped: the slot's own frame was not rendered in time (or lost in the ring): an earlier
            image repeats.
    """

    index: int
    image: npt.NDArray[np.uint8]
    audio: npt.NDArray[np.float32]
    skipped: bool


@dataclass(frozen=True)
class _Arrived:
    frame: Frame
    image: npt.NDArray[np.uint8] | None


@dataclass(frozen=True)
class _Ended:
    error: StableFaceError | None


class RemoteSession:
    """One call's session in a render worker.

    Args:
        number: the call's number with its worker.
        info: the avatar it shows.
        ring: where the worker puts its frames (this side owns it).
        send: hands a message to the worker's pipe (never blocks).
        forget: called once on close: the worker's reader stops delivering to this call.
    """

    def __init__(
        self,
        number: int,
        info: AvatarInfo,
        ring: FrameRing,
        send: Callable[[ToWorker], None],
        forget: Callable[[int], None],
    ) -> None:
        self.number = number
        self.info = info
        self.ring = ring
        self.stats = RemoteStats(latency_ms=info.latency_ms)
        self._send = send
        self._forget = forget
        self._loop = asyncio.get_running_loop()
        self._input = AudioInput()
        self._arrivals: asyncio.Queue[_Arrived | _Ended] = asyncio.Queue()
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ the server's side

    async def push_audio(
        self, samples: npt.NDArray[np.generic], sample_rate_hz: int = SAMPLE_RATE_HZ
    ) -> None:
        """Send captured audio, (S,) or (S, channels), any numeric type and rate, to the worker.

        Raises:
            InputError: unusable samples, or the call is closed.
        """
        if self._closed:
            raise InputError("push_audio after the call was closed")
        converted = self._input.convert(samples, sample_rate_hz)
        if len(converted):
            self._send(CallAudio(self.number, converted))

    async def frames(self) -> AsyncIterator[CallFrame]:
        """The call's paced output as the worker emits it.

        Raises:
            RenderWorkerLost: the worker died.
            RenderFailed: the worker's session of this call failed.
        """
        if not self._started:
            self._started = True
            self._send(StartCall(self.number))
        previous: npt.NDArray[np.uint8] | None = None
        while not self._closed:
            item = await self._arrivals.get()
            if isinstance(item, _Ended):
                if item.error is not None:
                    raise item.error
                return
            frame, image = item.frame, item.image
            if image is None:
                self.stats.frames_lost += 1
                if previous is None:
                    continue
            previous = image if image is not None else previous
            assert previous is not None
            self.stats.frames_out += 1
            self.stats.frames_skipped += int(frame.skipped or image is None)
            self.stats.lag_ms = frame.lag_ms
            yield CallFrame(frame.index, previous, frame.audio, frame.skipped or image is None)

    async def close(self) -> None:
        """End the call in the worker and free the ring (idempotent; never waits on the worker)."""
        if self._closed:
            return
        self._closed = True
        self._forget(self.number)
        self._send(CloseCall(self.number))
        self.ring.close()
        self._arrivals.put_nowait(_Ended(None))

    # ------------------------------------------------------------------ the worker reader's side

    def arrived(self, frame: Frame) -> None:
        """On the reader thread: copy the frame's image out of the ring, pass it to the loop."""
        self._deliver(_Arrived(frame, self.ring.read(frame.index)))

    def ended(self, error: StableFaceError | None) -> None:
        """On the reader thread: the output ended (``error``: why it cannot go on)."""
        self._deliver(_Ended(error))

    def reported(self, snapshot: dict[str, Any]) -> None:
        self._call_soon(lambda: setattr(self.stats, "reported", snapshot))

    def _deliver(self, item: _Arrived | _Ended) -> None:
        self._call_soon(lambda: self._arrivals.put_nowait(item))

    def _call_soon(self, callback: Callable[[], None]) -> None:
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:  # its event loop has closed: the call is gone with it
            logger.debug("call %d: message after its event loop closed", self.number)
