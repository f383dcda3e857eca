"""A streaming session: live audio in, paced video frames with their (delayed) audio out.

The output timeline runs a fixed ``D`` frames behind the input: output frame ``k`` shows the
stream frame ``k - D`` and carries the input samples ``[(k - D)·640, (k - D + 1)·640)``, so audio
and lips leave together and the audio out is the audio in, sample-exact, delayed by D·40 ms.

Paced (live input): output frame ``k`` is due at ``start + k·40 ms`` by the session's
clock and is emitted then whatever happens. A frame not rendered in time is replaced by the
newest image rendered since (a late one) or the previous image (counted as skipped); when the
renderer is behind and a newer chunk is already waiting, it skips the older chunk. The shown
image therefore lags its slot by at most about one chunk's compute, and the lag falls back to
zero as soon as compute keeps up: delay never accumulates, the audio never stops. Input that
arrives later than ``input_jitter_ms`` is replaced by silence (and the late samples dropped when
they come), input more than ``max_input_ahead_ms`` ahead is dropped: the queues are bounded in
milliseconds.

Unpaced (files, tests): no clock; every frame is rendered and frames are emitted as fast as the
consumer takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.ai_mark import apply_ai_mark
from engines.errors import InputError
from engines.timebase import FRAME_MS, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME
from realtime.audio_input import AudioInput
from realtime.engine import AvatarEngine
from realtime.memory import release_freed_memory_soon
from realtime.render_scheduler import DueChunk
from realtime.settings import StreamSettings
from realtime.stream import AvatarStream, StreamFrame
from realtime.tasks import stop_task

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
ImageRGB = npt.NDArray[np.uint8]
UNPACED_FRAMES_AHEAD = 16
RENDER_AHEAD_MS = 400.0


@dataclass
class OutputFrame:
    """One paced output frame.

    Attributes:
        index: k, output frame number; its presentation time is ``k / 25`` s.
        image: (H, W, 3) uint8 RGB.
        audio: (640,) float32 16 kHz samples that play with this frame (``audio_lead_ms`` ahead of
            the frame's own 40 ms, see ``StreamSettings``).
        skipped: True when the slot's own frame was not rendered in time and an earlier (or
            late) image is shown instead.
        source: the stream frame whose image is shown (its ``index`` + the delay is the slot it
            was made for; mouth geometry, voice gate), None before the first image.
    """

    index: int
    image: ImageRGB
    audio: FloatArray
    skipped: bool
    source: StreamFrame | None

    @property
    def pts_s(self) -> float:
        return self.index * FRAME_MS / 1000


@dataclass
class SessionStats:
    """Counters of one session (read by servers and benchmarks)."""

    latency_ms: float
    frames_out: int = 0
    frames_rendered: int = 0
    frames_skipped: int = 0
    chunks_skipped: int = 0
    deadlines_missed: int = 0
    silence_filled_ms: float = 0.0
    audio_dropped_ms: float = 0.0
    lag_ms: float = 0.0
    max_lag_ms: float = 0.0
    render_slack_ms: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    stage_ms: dict[str, list[float]] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """Plain numbers: counters and p50/p95 of the per-chunk stage times and render slack."""

        def quantiles(values: Iterable[float]) -> dict[str, float]:
            array = np.asarray(list(values)[-500:], dtype=np.float64)
            if not len(array):
                return {}
            return {"p50": float(np.percentile(array, 50)), "p95": float(np.percentile(array, 95))}

        # The worker thread appends to these while the loop reads: copy them first, each copy one
        # C call that no other Python thread can interleave with (iterating them could be).
        slack = self.render_slack_ms.copy()
        stages = self.stage_ms.copy()
        return {
            "latency_ms": self.latency_ms,
            "frames_out": self.frames_out,
            "frames_rendered": self.frames_rendered,
            "frames_skipped": self.frames_skipped,
            "chunks_skipped": self.chunks_skipped,
            "deadlines_missed": self.deadlines_missed,
            "silence_filled_ms": self.silence_filled_ms,
            "audio_dropped_ms": self.audio_dropped_ms,
            "lag_ms": self.lag_ms,
            "max_lag_ms": self.max_lag_ms,
            "render_slack_ms": quantiles(slack),
            "stage_ms": {stage: quantiles(values.copy()) for stage, values in stages.items()},
        }


class _SampleLog:
    """The input samples still to be played out, by absolute sample index."""

    def __init__(self) -> None:
        self.start = 0
        self._data = np.zeros(0, np.float32)

    @property
    def end(self) -> int:
        return self.start + len(self._data)

    def append(self, samples: FloatArray) -> None:
        self._data = np.concatenate([self._data, samples])

    def read(self, first: int, count: int) -> FloatArray:
        """Samples [first, first + count); zeros before the start of the stream and past its end."""
        out = np.zeros(count, np.float32)
        low, high = max(first, self.start), min(first + count, self.end)
        if high > low:
            out[low - first : high - first] = self._data[low - self.start : high - self.start]
        return out

    def forget_before(self, index: int) -> None:
        if index > self.start:
            drop = min(index - self.start, len(self._data))
            self._data = self._data[drop:]
            self.start += drop


class StreamingSession:
    """One live (or unpaced) stream through a shared ``AvatarEngine``.

    Args:
        engine: the loaded avatar, backend and worker thread.
        paced: pace output by ``clock`` and never wait for compute (live); else render every
            frame and emit as fast as consumed (files, tests).
        settings: overrides the engine's stream settings for this session.
        clock: monotonic seconds (tests may slow or speed it).
        on_stage_ms: called with (stage, ms) for each stage of each chunk, on the worker thread.
    """

    def __init__(
        self,
        engine: AvatarEngine,
        paced: bool = True,
        settings: StreamSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_stage_ms: Callable[[str, float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.paced = paced
        self.settings = settings or engine.settings
        self.clock = clock
        self.on_stage_ms = on_stage_ms
        self.delay = engine.delay_frames
        self._audio_lead = round(self.settings.audio_lead_ms * SAMPLE_RATE_HZ / 1000)
        self.stats = SessionStats(latency_ms=self.delay * FRAME_MS)
        self._input = AudioInput()
        self._stream: AvatarStream | None = None
        self._pending: list[FloatArray] = []
        self._samples_in = 0  # samples accepted on the input timeline (pushed or filled)
        self._late_debt = 0  # filled-in silence not yet matched by late audio
        self._log = _SampleLog()
        self._ready: dict[int, StreamFrame] = {}
        self._next_out = 0  # the next output frame to emit
        self._finished = False  # the stream has been told the input ended
        self._ended = False
        self._closed = False
        self._wake = asyncio.Event()
        self._consumed = asyncio.Event()
        self._producer: asyncio.Task[None] | None = None
        self._start: float | None = None

    # ------------------------------------------------------------------ input

    async def push_audio(
        self, samples: npt.NDArray[np.generic], sample_rate_hz: int = SAMPLE_RATE_HZ
    ) -> None:
        """Queue captured audio: (S,) or (S, channels), any numeric type, any rate.

        Raises:
            InputError: unusable samples, or the input was already ended.
        """
        if self._ended or self._closed:
            raise InputError("push_audio after the input ended")
        self.push_converted(self._input.convert(samples, sample_rate_hz))

    def push_converted(self, samples: FloatArray) -> None:
        """Queue 16 kHz mono float32 samples (S,) converted elsewhere (a render worker's calls).

        Raises:
            InputError: the input was already ended.
        """
        if self._ended or self._closed:
            raise InputError("push_audio after the input ended")
        self._accept(samples)

    def end_input(self) -> None:
        """No more audio: the remaining frames are rendered and the stream ends."""
        if not self._ended:
            self._accept(self._input.flush())
            self._ended = True
            self._wake.set()

    def _accept(self, samples: FloatArray) -> None:
        if self._late_debt and len(samples):
            dropped = min(self._late_debt, len(samples))
            samples = samples[dropped:]
            self._late_debt -= dropped
            self.stats.audio_dropped_ms += 1000 * dropped / SAMPLE_RATE_HZ
        if self.paced and self._start is not None and len(samples):
            allowed = self._due_samples(self.settings.max_input_ahead_ms) - self._samples_in
            if len(samples) > allowed:
                excess = len(samples) - max(allowed, 0)
                samples = samples[: len(samples) - excess]
                self.stats.audio_dropped_ms += 1000 * excess / SAMPLE_RATE_HZ
        if len(samples):
            self._pending.append(samples)
            self._log.append(samples)
            self._samples_in += len(samples)
            self._wake.set()

    def _due_samples(self, offset_ms: float = 0.0) -> int:
        """Input samples that should have arrived by now + ``offset_ms``."""
        assert self._start is not None
        return max(0, int((self.clock() - self._start + offset_ms / 1000) * SAMPLE_RATE_HZ))

    def _fill_silence(self) -> None:
        """Real time: input later than the jitter allowance becomes silence."""
        missing = self._due_samples(-self.settings.input_jitter_ms) - self._samples_in
        if missing > 0 and not self._ended:
            self._late_debt += missing
            self.stats.silence_filled_ms += 1000 * missing / SAMPLE_RATE_HZ
            silence = np.zeros(missing, np.float32)
            self._pending.append(silence)
            self._log.append(silence)
            self._samples_in += missing

    # ------------------------------------------------------------------ compute

    def due_time(self, output_index: int) -> float:
        """Clock time at which output frame ``output_index`` is due (after ``start``)."""
        assert self._start is not None
        return self._start + output_index * FRAME_MS / 1000

    def _feed(self, pending: list[FloatArray], end: bool) -> AvatarStream:
        """On the worker thread: the stream (made on first use) with the pending audio pushed."""
        if self._stream is None:
            self._stream = self.engine.new_stream(self.settings)
            self._stream.times.observer = self.on_stage_ms
            self.stats.stage_ms = self._stream.times.recent  # the stream's own bounded lists
        stream = self._stream
        for samples in pending:
            stream.push(samples)
        if end:
            stream.finish()
        return stream

    def _work(self, pending: list[FloatArray], end: bool) -> list[StreamFrame]:
        """On the worker thread, unpaced (and the warm-up): feed audio, render every ready chunk
        (up to ``UNPACED_FRAMES_AHEAD`` frames) alone."""
        stream = self._feed(pending, end)
        out: list[StreamFrame] = []
        while stream.chunk_ready() and (not out or (not self.paced and len(out) < UNPACED_FRAMES_AHEAD)):
            out += stream.render_chunk()
        return out

    # The scheduler's side (``realtime.render_scheduler.ScheduledSession``), on the worker thread.

    def due_chunk(self, pending: list[FloatArray], end: bool, compute_s: float) -> DueChunk:
        """Feed the audio; skip every ready chunk that cannot be shown in time (its last frame's
        slot has passed, or it would finish late while a newer chunk is waiting). Nothing is due
        when no chunk is ready or the next one is more than ``RENDER_AHEAD_MS`` ahead."""
        stream = self._feed(pending, end)
        out: list[StreamFrame] = []
        while stream.chunk_ready():
            first = stream.next_frame + self.delay
            last = first + stream.chunk - 1
            now = self.clock()
            passed = now > self.due_time(last)
            late = now + compute_s > self.due_time(last)
            if passed or (late and stream.chunks_ready() > 1):
                out += stream.render_chunk(render=False)
                self.stats.chunks_skipped += 1
                self.stats.deadlines_missed += int(passed)
                continue
            if self.due_time(first) > now + RENDER_AHEAD_MS / 1000 and out:
                return DueChunk(out, None, None, stream)
            return DueChunk(out, self.due_time(first), self.due_time(last), stream)
        return DueChunk(out, None, None, stream)

    def rendered(self, due_s: float) -> None:
        self.stats.render_slack_ms.append(1000 * (due_s - self.clock()))

    def now(self) -> float:
        return self.clock()

    def _store(self, frames: list[StreamFrame]) -> None:
        """Keep computed frames for their output slots (late images too: they still show)."""
        for frame in frames:
            index = frame.index + self.delay
            if index >= self._next_out or (frame.image is not None and index >= 0):
                self._ready[index] = frame
            if frame.image is not None:
                self.stats.frames_rendered += 1

    async def _produce(self) -> None:
        try:
            await self._produce_frames()
        finally:  # wake the consumer whatever happened: it reports a failure instead of waiting
            self._consumed.set()

    async def _produce_frames(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            if self.paced and self._start is not None:
                self._fill_silence()
            pending, self._pending = self._pending, []
            end = self._ended and self._stream is not None and not self._finished
            if self.paced and self._start is not None:
                frames = await self.engine.scheduler.render(self, pending, end)
            else:
                frames = await loop.run_in_executor(self.engine.executor, self._work, pending, end)
            if end:
                self._finished = True
            self._store(frames)
            self._consumed.set()
            stream = self._stream
            if stream is not None and stream.chunk_ready():
                if not self.paced and len(self._ready) >= UNPACED_FRAMES_AHEAD:
                    self._wake.clear()
                    await self._wake.wait()
                continue
            if self._finished:
                return
            self._wake.clear()
            timeout = FRAME_MS / 1000 if self.paced else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    # ------------------------------------------------------------------ output

    async def start(self) -> None:
        """Render the silent warm-up and start the clock (called by ``frames`` if needed)."""
        if self._producer is not None:
            return
        loop = asyncio.get_running_loop()
        # The clock starts once the warm-up is rendered. Starting it before (which would take the
        # warm-up's time off every frame's latency) left sessions that start together on a busy
        # worker behind for good: 8 callers of the load test lost their calls.
        self._store(await loop.run_in_executor(self.engine.executor, self._work, [], False))
        self._start = self.clock()
        self._producer = asyncio.create_task(self._produce())

    def _last_output_index(self) -> int | None:
        """The final output frame once the input has ended (None while it goes on)."""
        if not self._ended:
            return None
        return math.ceil(self._samples_in / SAMPLES_PER_FRAME) - 1 + self.delay

    async def frames(self) -> AsyncIterator[OutputFrame]:
        """The paced output: one ``OutputFrame`` per 40 ms (real time) or as fast as rendered."""
        await self.start()
        previous: ImageRGB | None = None
        shown = 0
        shown_source: StreamFrame | None = None
        while not self._closed:
            index = self._next_out
            last = self._last_output_index()
            if last is not None and index > last:
                return
            if self.paced:
                wait = self.due_time(index) - self.clock()
                if wait > 0:
                    await asyncio.sleep(wait)
            else:
                while index not in self._ready and not self._producer_done():
                    self._consumed.clear()
                    self._wake.set()
                    await self._consumed.wait()
            self._raise_if_failed()
            source = self._ready.get(index)
            skipped = source is None or source.image is None
            if source is not None and source.image is not None:
                previous, shown, shown_source = source.image, index, source
            else:  # not in time: the newest image rendered late, else the previous one again
                late = [k for k, frame in self._ready.items() if k < index and frame.image is not None]
                if late:
                    shown_source = self._ready[max(late)]
                    previous, shown = shown_source.image, max(late)
            if previous is None:
                previous = self.engine.frames.full_frame(0).copy()
                if self.settings.ai_mark:
                    apply_ai_mark(previous)
            if self.paced and self._start is not None:
                self._fill_silence()
            first = (index - self.delay) * SAMPLES_PER_FRAME + self._audio_lead
            audio = self._log.read(first, SAMPLES_PER_FRAME)
            self._log.forget_before(first)
            self._next_out = index + 1
            for stale in [k for k in self._ready if k <= index]:
                del self._ready[stale]
            self.stats.frames_out += 1
            self.stats.frames_skipped += int(skipped)
            self.stats.lag_ms = (index - shown) * FRAME_MS
            self.stats.max_lag_ms = max(self.stats.max_lag_ms, self.stats.lag_ms)
            self._wake.set()
            yield OutputFrame(index, previous, audio, skipped, shown_source)

    def _producer_done(self) -> bool:
        return self._producer is not None and self._producer.done()

    def _raise_if_failed(self) -> None:
        """A failure on the worker thread ends this session (and only this one) with its error."""
        task = self._producer
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    async def close(self) -> None:
        """Stop the session and free its state (the engine stays loaded)."""
        self._closed = True
        self._wake.set()
        if self._producer is not None:
            await stop_task(self._producer, "the session's producer", failure_raised_elsewhere=True)
        self.engine.scheduler.forget(self)
        self._ready.clear()
        self._pending.clear()
        self._stream = None
        self._log = _SampleLog()
        release_freed_memory_soon()
