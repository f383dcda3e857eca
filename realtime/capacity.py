"""How many calls a render worker can carry in real time, from what its renderers measurably cost.

A call needs one chunk of C frames rendered every C × 40 ms. The render scheduler of each avatar
learns what a batch costs (``realtime.batch_cost``: seconds ≈ fixed + per-row × rows, updated by
every batch it runs); before the first call each render worker measures it
(``realtime.cost_probe``: a few batches of one row and of ``max_batch`` rows). n calls of one
avatar then keep the render device busy for ``render_load(n)`` of the time: ⌈n / max_batch⌉
batches per chunk period. All avatars of a worker share its device, so their loads add up, and a
call is admitted only while the sum stays under ``load_limit``: below 1 because the same machine
also encodes, encrypts and sends every call's media (on a CPU those share the cores with the
renderer; on a GPU they do not).
"""

from __future__ import annotations

from dataclasses import dataclass

from engines.timebase import FRAME_MS
from realtime.batch_cost import BatchCost

# Share of the render device's time live calls may take. On a 2-core CPU with its callers on the
# same machine, two calls of the default avatar (render load 0.50) repeated 18-35% of their frames,
# one (0.28) under 0.5%, and four `tiny` calls (0.40) none (benchmarks/calls.py, tests/test_load.py):
# the rest of the CPU goes to WebRTC. On a GPU the media work runs on the CPU cores beside it.
CPU_LOAD_LIMIT = 0.45
GPU_LOAD_LIMIT = 0.85


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
