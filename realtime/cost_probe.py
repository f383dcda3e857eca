"""Measuring what a batch of an avatar's renderer costs on this machine, before any call: a few
batches of one row and of ``max_batch`` rows on the engine's render thread, taught to its render
scheduler's cost model (``realtime.batch_cost``), which its live batches then keep refining.
``realtime.capacity`` turns that cost into the calls a server admits."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from engines.timebase import SAMPLE_RATE_HZ
from realtime.batch_cost import BatchCost
from realtime.engine import AvatarEngine
from realtime.stream import render_chunks

PROBE_BATCHES = 6  # timed batches per size, after one untimed
PROBE_AUDIO_S = 6.0


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
