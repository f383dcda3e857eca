"""One loaded avatar shared by many sessions: the bundle, one backend, its worker thread and the
render scheduler that batches the live sessions onto it.

Every computation of every session (features, networks, raster, paste-back) runs on the engine's
one worker thread, never on the event loop, so backend calls never overlap (backends reuse their
output buffers) and a session's work is sequential. Live sessions' chunks go through the
scheduler (``realtime.render_scheduler``), which renders all that are due as one batch; files and
warm-ups run alone. One thread, not several: the work around the networks is batched tensor code,
and Python work competing for the GIL from two threads was measured about fourfold slower.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from threadpoolctl import threadpool_limits

from engines.avatar_frames import AvatarFrames
from engines.backends import StreamShape, load_backend
from engines.backends.base import Backend
from engines.bundle import AvatarBundle
from engines.device_frames import DeviceFrames
from engines.process_hold import CountedHold
from engines.timebase import FRAME_MS
from realtime.render_scheduler import RenderScheduler
from realtime.settings import FEATURE_MARGIN_MS, StreamSettings, output_delay_frames
from realtime.stream import AvatarStream

logger = logging.getLogger(__name__)


def _single_threaded_blas() -> CountedHold[threadpool_limits]:
    """numpy's BLAS on one thread while any engine is open; the previous limits return when the last
    engine closes (the limit is process-wide, so it is counted across engines).

    The per-frame products of the hot path are tiny, and BLAS threads would only wait on cores that
    the backend's own threads keep busy (13.8 ms -> 0.03 ms for one product, measured).
    """
    return CountedHold(
        lambda: threadpool_limits(limits=1, user_api="blas"), lambda limits: limits.restore_original_limits()
    )


_BLAS = _single_threaded_blas()


class AvatarEngine:
    """A loaded avatar with its backend, ready to open sessions.

    Args:
        bundle: the avatar.
        backend: a backend loaded for this avatar's networks.
        settings: default stream settings of its sessions.
        device_frames: the avatar's per-frame tensors on the backend's device, to share between
            engines of one avatar (default: made here; on a GPU that uploads every reference frame).

    While it is open, numpy's BLAS runs on one thread in this process (see ``_single_threaded_blas``);
    ``close`` restores the previous limits once no other engine is open.
    """

    def __init__(
        self,
        bundle: AvatarBundle,
        backend: Backend,
        settings: StreamSettings | None = None,
        device_frames: DeviceFrames | None = None,
    ) -> None:
        self.bundle = bundle
        self.backend = backend
        self.settings = settings or StreamSettings()
        self.frames = AvatarFrames(bundle)
        self.device_frames = device_frames or DeviceFrames(bundle, backend.device)
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"stableface-{bundle.manifest.name}"
        )
        self.scheduler = RenderScheduler(lambda: self.executor, backend.shape.max_batch)
        _BLAS.acquire()
        self._closed = False
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
        cls,
        avatar: str | Path,
        backend: str = "auto",
        settings: StreamSettings | None = None,
        max_batch: int | None = None,
    ) -> AvatarEngine:
        """Load an avatar bundle and a backend for its streaming shapes (chunk from ``settings``,
        at most ``max_batch`` sessions a call: default the avatar's ``streaming.max_batch``)."""
        settings = settings or StreamSettings()
        bundle = AvatarBundle.load(avatar)
        shape = StreamShape.for_config(bundle.config, chunk_frames=settings.chunk_frames, max_batch=max_batch)
        return cls(bundle, load_backend(bundle, backend, shape), settings)

    def preload(self) -> None:
        """Decode and cache every reference frame's images for the per-frame work now (a second or
        so), so that the first pass of live calls through the reference video does not pay it."""
        self.device_frames.images.preload()

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
            "feature_window_ms": FEATURE_MARGIN_MS,
            "compute_allowance_ms": self.compute_allowance_ms,
            "rounding_to_frames_ms": self.latency_ms
            - ((chunk + self.lookahead_frames) * FRAME_MS + FEATURE_MARGIN_MS + self.compute_allowance_ms),
            "total_ms": self.latency_ms,
        }

    def new_stream(self, settings: StreamSettings | None = None) -> AvatarStream:
        """A fresh deterministic stream (call its methods on the worker thread only)."""
        return AvatarStream(
            self.bundle,
            self.frames,
            self.device_frames,
            self.backend,
            settings or self.settings,
            self.delay_frames,
        )

    def close(self) -> None:
        """Finish the queued work, release the backend and the BLAS limit (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.executor.shutdown(wait=True)
        self.backend.close()
        _BLAS.release()
