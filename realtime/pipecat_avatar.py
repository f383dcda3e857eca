"""The avatar as a pipecat video service: a face for pipecat voice agents.

``StableFaceVideoService`` is a pipecat ``FrameProcessor``. Put it after the TTS service and
before the output transport::

    engine = load_avatar_engine("default")                # once, shared by every pipeline
    avatar = StableFaceVideoService(engine)
    Pipeline([transport.input(), stt, llm, tts, avatar, transport.output()])

It consumes the pipeline's bot audio (``OutputAudioRawFrame``, which ``TTSAudioRawFrame`` is)
and emits, every 40 ms, the avatar's frame (``OutputImageRawFrame``) and, while there is speech,
the same audio delayed by the engine's pipeline delay (``TTSAudioRawFrame``, 16 kHz) so lips and
voice leave together. Between utterances the avatar idles with its mouth closed. TTS audio comes
faster than real time: it is queued here and fed to the engine at the pace of the clock, so
none of it is dropped. An ``InterruptionFrame`` (the user spoke over the bot) drops the queued
audio and restarts the stream: the next frame shows a closed mouth and no more old audio leaves.

Only this module imports pipecat (``pip install -e .[pipecat]``); the rest of the project never
does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.bundle_paths import DEFAULT_AVATAR_DIR, DEFAULT_AVATAR_NAME
from engines.errors import MissingDependencyError
from engines.timebase import SAMPLE_RATE_HZ
from realtime.audio_input import AudioInput
from realtime.engine import AvatarEngine
from realtime.session import OutputFrame, StreamingSession
from realtime.settings import StreamSettings

try:
    from pipecat.frames.frames import (
        CancelFrame,
        EndFrame,
        Frame,
        InterruptionFrame,
        OutputAudioRawFrame,
        OutputImageRawFrame,
        StartFrame,
        TTSAudioRawFrame,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        f"the pipecat integration needs pipecat-ai: pip install -e .[pipecat] ({error})"
    ) from error

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
FEED_TICK_S = 0.02
# Audio is fed this far ahead of the clock, so the engine never sees the input late.
FEED_AHEAD_MS = 60.0
# At most this much queued bot audio; more is dropped (and logged): a runaway TTS must not fill
# the memory.
MAX_QUEUED_S = 300.0


def load_avatar_engine(
    avatar: str | Path = DEFAULT_AVATAR_NAME, backend: str = "auto", settings: StreamSettings | None = None
) -> AvatarEngine:
    """Load an avatar once, for every pipeline's ``StableFaceVideoService`` to share.

    Args:
        avatar: a bundle folder, or ``"default"`` for the bundled avatar.
        backend: ``auto`` or a backend name (``torch-cpu``, ``onnxruntime-cpu``, ...).
        settings: stream settings of the sessions (default ``StreamSettings()``).
    """
    folder = DEFAULT_AVATAR_DIR if str(avatar) == DEFAULT_AVATAR_NAME else Path(avatar)
    engine = AvatarEngine.load(folder, backend, settings)
    engine.preload()
    return engine


class _BotAudioQueue:
    """Bot audio waiting to be fed to the engine: 16 kHz mono float32, first in first out."""

    def __init__(self, max_samples: int) -> None:
        self._pieces: list[FloatArray] = []
        self._size = 0
        self._max = max_samples
        self._converter = AudioInput()
        self.dropped_samples = 0

    def __len__(self) -> int:
        return self._size

    def add(self, frame: OutputAudioRawFrame) -> None:
        """Queue an audio frame's int16 PCM, converted to 16 kHz mono."""
        pcm = np.frombuffer(frame.audio, dtype=np.int16)
        if frame.num_channels > 1:
            pcm = pcm[: len(pcm) - len(pcm) % frame.num_channels].reshape(-1, frame.num_channels)
        samples = self._converter.convert(pcm, frame.sample_rate)
        room = self._max - self._size
        if len(samples) > room:
            self.dropped_samples += len(samples) - room
            samples = samples[:room]
        if len(samples):
            self._pieces.append(samples)
            self._size += len(samples)

    def take(self, count: int) -> FloatArray:
        """Up to ``count`` queued samples (fewer when the queue runs dry)."""
        out: list[FloatArray] = []
        needed = count
        while needed and self._pieces:
            piece = self._pieces[0]
            if len(piece) <= needed:
                out.append(self._pieces.pop(0))
                needed -= len(piece)
            else:
                out.append(piece[:needed])
                self._pieces[0] = piece[needed:]
                needed = 0
        taken = np.concatenate(out) if out else np.zeros(0, np.float32)
        self._size -= len(taken)
        return taken

    def clear(self) -> None:
        self._pieces.clear()
        self._size = 0
        self._converter = AudioInput()


class StableFaceVideoService(FrameProcessor):
    """Renders the avatar speaking the pipeline's bot audio, in lip sync.

    Args:
        engine: a loaded avatar (``load_avatar_engine``); many services may share one.
        settings: overrides the engine's stream settings for this pipeline's stream.
        sync_images_with_audio: route each image through the output transport's audio queue so
            it is shown once the audio before it has been sent (pipecat's
            ``OutputImageRawFrame.sync_with_audio``; the transport then sends its latest image at
            its frame rate, ``video_out_is_live=False``); else images go out on the live video
            queue (``video_out_is_live=True``).
        clock: monotonic seconds.
        **kwargs: passed to ``FrameProcessor``.
    """

    def __init__(
        self,
        engine: AvatarEngine,
        settings: StreamSettings | None = None,
        sync_images_with_audio: bool = True,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._engine = engine
        self._settings = settings
        self._sync_images = sync_images_with_audio
        self._clock = clock
        self._queue = _BotAudioQueue(int(MAX_QUEUED_S * SAMPLE_RATE_HZ))
        self._session: StreamingSession | None = None
        self._emit_task: asyncio.Task[None] | None = None
        self._feed_task: asyncio.Task[None] | None = None
        self.frames_out = 0
        self.interruptions = 0

    @property
    def sync_images_with_audio(self) -> bool:
        """Whether images travel with the audio (the output transport must not be in live video mode)."""
        return self._sync_images

    @property
    def video_size(self) -> tuple[int, int]:
        """(width, height) of the frames it emits: give them to the output transport."""
        height, width = self._engine.frames.full_frame(0).shape[:2]
        return width, height

    @property
    def latency_ms(self) -> float:
        """How far the emitted audio and frames trail the bot audio fed in."""
        return self._engine.latency_ms

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self._start_stream()
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._stop_stream()
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            await self._interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, OutputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            self._queue.add(frame)
            if self._queue.dropped_samples:
                logger.warning("bot audio queue full: %d samples dropped", self._queue.dropped_samples)
                self._queue.dropped_samples = 0
        else:
            await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        await self._stop_stream()
        await super().cleanup()  # type: ignore[no-untyped-call]

    async def _start_stream(self) -> None:
        if self._session is not None:
            return
        session = StreamingSession(self._engine, paced=True, settings=self._settings, clock=self._clock)
        self._session = session
        self._emit_task = self.create_task(self._emit(session))
        self._feed_task = self.create_task(self._feed(session))

    async def _stop_stream(self) -> None:
        session, self._session = self._session, None
        for task in (self._feed_task, self._emit_task):
            if task is not None:
                await self.cancel_task(task)
        self._feed_task = self._emit_task = None
        if session is not None:
            with contextlib.suppress(Exception):
                await session.close()

    async def _interrupt(self) -> None:
        """Drop the queued bot audio and start a fresh stream (closed mouth, no old audio)."""
        self.interruptions += 1
        self._queue.clear()
        if self._session is not None:
            await self._stop_stream()
            await self._start_stream()

    async def _feed(self, session: StreamingSession) -> None:
        """Feed queued bot audio (silence when there is none) at the pace of the clock."""
        started = self._clock()
        fed = 0
        ahead = round(FEED_AHEAD_MS * SAMPLE_RATE_HZ / 1000)
        while True:
            due = round((self._clock() - started) * SAMPLE_RATE_HZ) + ahead - fed
            if due > 0:
                speech = self._queue.take(due)
                chunk = np.zeros(due, np.float32)
                chunk[: len(speech)] = speech
                session.push_converted(chunk)
                fed += due
            await asyncio.sleep(FEED_TICK_S)

    async def _emit(self, session: StreamingSession) -> None:
        async for output in session.frames():
            await self._push_output(output)

    async def _push_output(self, output: OutputFrame) -> None:
        image = output.image
        height, width = image.shape[:2]
        video = OutputImageRawFrame(
            image=np.ascontiguousarray(image).tobytes(), size=(width, height), format="RGB"
        )
        video.sync_with_audio = self._sync_images
        await self.push_frame(video)
        if np.any(output.audio):  # silence between utterances stays the transport's own
            pcm = np.clip(output.audio * 32768.0, -32768, 32767).astype(np.int16)
            await self.push_frame(
                TTSAudioRawFrame(audio=pcm.tobytes(), sample_rate=SAMPLE_RATE_HZ, num_channels=1)
            )
        self.frames_out += 1


__all__ = ["StableFaceVideoService", "load_avatar_engine"]
