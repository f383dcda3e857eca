"""How many calls a server can carry in real time, from what its renderers measurably cost.

A call needs one chunk of C frames rendered every C × 40 ms. The render scheduler of each avatar
learns what a batch costs (``realtime.batch_cost``: seconds ≈ fixed + per-row × rows, updated by
every batch it runs); before the first call the server measures it (``probe_batch_cost``: a few
batches of one row and of ``max_batch`` rows). n calls of one avatar then keep the render device
busy for ``render_load(n)`` of the time: ⌈n / max_batch⌉ batches per chunk period. All avatars of
a server share one device, so their loads add up, and a call is admitted only while the sum stays
under ``load_limit``: below 1 because the same machine also encodes, encrypts and sends every
call's media (on a CPU those share the cores with the renderer; on a GPU they do not).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engines.timebase import FRAME_MS, SAMPLE_RATE_HZ
from realtime.batch_cost import BatchCost
from realtime.engine import AvatarEngine
from realtime.stream import render_chunks

# Share of the render device's time live calls may take. On a 2-core CPU with its callers on the
# same machine, two calls of the default avatar (render load 0.50) repeated 18-35% of their frames,
# one (0.28) under 0.5%, and four `tiny` calls (0.40) none (benchmarks/calls.py, tests/test_load.py):
# the rest of the CPU goes to WebRTC. On a GPU the media work runs on the CPU cores beside it.
CPU_LOAD_LIMIT = 0.45
GPU_LOAD_LIMIT = 0.85
PROBE_BATCHES = 6  # timed batches per size, after one untimed
PROBE_AUDIO_S = 6.0


def load_limit_for(device: str) -> float:
    """The default share of the render device's time that calls may take on ``device``."""
    return GPU_LOAD_LIMIT if device.startswith("cuda") else CPU_LOAD_LIMIT


def render_load(cost: BatchCost, calls: int, chunk_frames: int, max_batch: int) -> float:
    """Share of the device's time that ``calls`` live calls of one avatar take: the batches
    rendering one chunk of each, per chunk period (0 for no calls)."""
    if calls <= 0:
        return 0.0
    full, rest = divmod(calls, max_batch)
    seconds = full * cost.predict(max_batch) + (cost.predict(rest) if rest else 0.0)
    return seconds / (chunk_frames * FRAME_MS / 1000)


@dataclass(frozen=True)
class AvatarLoad:
    """One avatar's part of a server's load."""

    cost: BatchCost
    chunk_frames: int
    max_batch: int
    calls: int  # admitted (connected or connecting)

    @classmethod
    def of(cls, engine: AvatarEngine, calls: int) -> AvatarLoad:
        shape = engine.backend.shape
        return cls(engine.scheduler.cost, shape.chunk_frames, shape.max_batch, calls)

    def load(self, extra_calls: int = 0) -> float:
        return render_load(self.cost, self.calls + extra_calls, self.chunk_frames, self.max_batch)


def calls_supported(avatar: AvatarLoad, others: list[AvatarLoad], load_limit: float, hard_cap: int) -> int:
    """Most calls of ``avatar`` that fit beside the other avatars' calls under ``load_limit``
    (at most ``hard_cap``), counting the ones it has. An idle server always takes one call: the
    operator chose the machine, and a measurement taken under a passing load must not shut it."""
    busy = sum(other.load() for other in others)
    supported = 0
    while supported < hard_cap:
        if busy + render_load(avatar.cost, supported + 1, avatar.chunk_frames, avatar.max_batch) > load_limit:
            break
        supported += 1
    if not any(other.calls for other in others):
        supported = max(supported, min(1, hard_cap))
    return supported


def _probe_audio(seed: int) -> npt.NDArray[np.float32]:
    """Voiced-like audio (harmonics under a syllable-rate envelope) that keeps the voice gate open."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(PROBE_AUDIO_S * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    voice = np.zeros_like(t)
    for harmonic in range(1, 8):
        voice += np.sin(2 * np.pi * 140 * harmonic * t + rng.uniform(0, 6.3)) / harmonic
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    audio: npt.NDArray[np.float32] = (0.1 * voice * envelope + 0.003 * rng.standard_normal(len(t))).astype(
        np.float32
    )
    return audio


def probe_batch_cost(engine: AvatarEngine) -> BatchCost:
    """Measure what a batch of one row and of ``max_batch`` rows costs, on the engine's worker,
    and teach it to the engine's scheduler (before any call; its live batches refine it).

    Returns:
        The scheduler's cost model, now fitted to the probe.
    """

    def probe() -> None:
        cost = engine.scheduler.cost
        sizes = sorted({1, engine.backend.shape.max_batch})
        for rows in sizes * 2:  # alternating sizes lets the fit see the slope from the start
            streams = [engine.new_stream() for _ in range(rows)]
            for index, stream in enumerate(streams):
                stream.push(_probe_audio(index))
                stream.finish()
            render = [True] * rows
            render_chunks(streams, render)  # untimed: first-call effects
            for _ in range(PROBE_BATCHES // 2):
                started = time.perf_counter()
                render_chunks(streams, render)
                cost.observe(rows, time.perf_counter() - started)

    engine.executor.submit(probe).result()
    return engine.scheduler.cost
