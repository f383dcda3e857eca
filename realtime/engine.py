"""One loaded avatar shared by many sessions: the bundle, one backend and its worker thread.

Every computation of every session (features, networks, raster, paste-back) runs on the engine's
worker thread(s), never on the event loop; a session's work is sequential. One worker is the
default: the per-frame Python work (the rasteriser's many OpenCV calls, each releasing the GIL)
slows down about fourfold when two threads compete for the GIL (measured), which costs more than
overlapping it with the backend gains. Backend calls go through a lock, one at a time, and their
outputs are copied before the lock is released (backends reuse their buffers), so ``workers`` > 1
is safe.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from engines.avatar_frames import AvatarFrames
from engines.backends import StreamShape, load_backend
from engines.backends.base import Backend, ChunkInput, ChunkOutput, FloatArray
from engines.bundle import AvatarBundle
from realtime.settings import FRAME_MS, StreamSettings, output_delay_frames
from realtime.stream import AvatarStream

logger = logging.getLogger(__name__)


class SerializedBackend:
    """A backend shared by worker threads: one call at a time, outputs copied out under the lock."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.shape = inner.shape
        self._lock = threading.Lock()

    def expressions(self, audio: FloatArray) -> FloatArray:
        with self._lock:
            return self.inner.expressions(audio).copy()

    def smoothing_weights(self, mouth: FloatArray) -> FloatArray:
        with self._lock:
            return self.inner.smoothing_weights(mouth).copy()

    def run(self, chunk: ChunkInput) -> ChunkOutput:
        with self._lock:
            result = self.inner.run(chunk)
            return ChunkOutput(frames=result.frames.copy(), features=result.features.copy())

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        with self._lock:
            self.inner.close()

    def __enter__(self) -> SerializedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AvatarEngine:
    """A loaded avatar with its backend, ready to open sessions.

    Args:
        bundle: the avatar.
        backend: a backend loaded for this avatar's networks.
        settings: default stream settings of its sessions.
        workers: worker threads (default 1, see the module docstring).
    """

    def __init__(
        self,
        bundle: AvatarBundle,
        backend: Backend,
        settings: StreamSettings | None = None,
        workers: int | None = None,
    ) -> None:
        self.bundle = bundle
        self.backend = SerializedBackend(backend)
        self.settings = settings or StreamSettings()
        # Process-wide: numpy's per-frame products are tiny, and BLAS threads would only wait on
        # cores that the backend's own thread pool keeps busy.
        threadpool_limits(limits=1, user_api="blas")
        self.frames = AvatarFrames(bundle)
        self.executor = ThreadPoolExecutor(
            max_workers=workers or 1,
            thread_name_prefix=f"stableface-{bundle.manifest.name}",
        )
        self.lookahead_frames = bundle.config.audio.lookahead_frames
        allowance = self.settings.compute_allowance_ms
        self.compute_allowance_ms = (
            allowance if allowance is not None else bundle.config.streaming.compute_allowance_ms
        )
        self.delay_frames = output_delay_frames(
            backend.shape.chunk_frames, self.lookahead_frames, self.compute_allowance_ms
        )

    @classmethod
    def load(
        cls, avatar: str | Path, backend: str = "auto", settings: StreamSettings | None = None
    ) -> AvatarEngine:
        """Load an avatar bundle and a backend for its streaming shapes (chunk from ``settings``)."""
        settings = settings or StreamSettings()
        bundle = AvatarBundle.load(avatar)
        shape = StreamShape.for_config(bundle.config, chunk_frames=settings.chunk_frames)
        return cls(bundle, load_backend(bundle, backend, shape), settings)

    @property
    def latency_ms(self) -> float:
        """The output delay: audio sample in → the frame showing it and the sample itself out."""
        return self.delay_frames * FRAME_MS

    def latency_budget(self) -> dict[str, float]:
        """Where the output delay goes, in ms."""
        chunk = self.backend.shape.chunk_frames
        return {
            "lookahead_ms": self.lookahead_frames * FRAME_MS,
            "chunk_fill_ms": (chunk - 1) * FRAME_MS,
            "frame_duration_ms": FRAME_MS,
            "feature_window_ms": 7.5,
            "compute_allowance_ms": self.compute_allowance_ms,
            "rounding_to_frames_ms": self.latency_ms
            - ((chunk + self.lookahead_frames) * FRAME_MS + 7.5 + self.compute_allowance_ms),
            "total_ms": self.latency_ms,
        }

    def new_stream(self, settings: StreamSettings | None = None) -> AvatarStream:
        """A fresh deterministic stream (call its methods on the worker thread only)."""
        return AvatarStream(
            self.bundle, self.frames, self.backend, settings or self.settings, self.delay_frames
        )

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.backend.close()
