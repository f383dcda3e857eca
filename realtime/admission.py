"""Whether a server takes one more call, and on which render worker: the workers' measured
capacity and the calls' recent frames.

``Admission`` holds the policy of ``stableface serve`` (``--admission``, ``--load-limit``,
``--max-sessions``): the load model of ``realtime.capacity`` over each render worker's avatars
(every worker is one render device and measures its own cost; its live batches keep refining it),
and the ``realtime.repeat_watch`` check of the calls the server carries. A worker that is
restarting carries nothing. It answers what each avatar can still take, where the next call goes,
and why a call is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from realtime.capacity import AvatarLoad, calls_supported, load_limit_for
from realtime.metrics import ServerMetrics
from realtime.repeat_watch import WINDOW_S, RepeatWatch
from realtime.settings import ServerSettings
from realtime.worker_pool import RenderPool, RenderWorker

logger = logging.getLogger(__name__)
REPEATED_LIMIT = 0.01  # calls repeating more of their slots than this are not keeping real time


@dataclass(frozen=True)
class _WorkerRoom:
    """One worker's calls of an avatar and how many it carries in real time."""

    worker: RenderWorker
    calls: int
    supported: int


class Admission:
    """The server's admission policy.

    Args:
        pool: the render workers (measured at their start unless ``settings.admission`` is
            ``max-sessions``).
        settings: ``admission``, ``load_limit`` and ``max_sessions``.
    """

    def __init__(self, pool: RenderPool, settings: ServerSettings) -> None:
        self.pool = pool
        self.measured = settings.admission == "measured"
        self.max_sessions = settings.max_sessions
        device = next(iter(pool.avatars.values())).device
        self.load_limit = settings.load_limit or load_limit_for(device)
        self.repeats = RepeatWatch()
        if self.measured:
            self._warn_about_heavy_avatars()

    def _warn_about_heavy_avatars(self) -> None:
        worker = self.pool.workers[0]
        for name, load in self._loads(worker).items():
            one = AvatarLoad(load.cost, load.chunk_frames, load.max_batch, 1).load()
            if one > self.load_limit:
                logger.warning(
                    "avatar %s: one call takes %.0f%% of a render device here (limit %.0f%%); it is "
                    "admitted alone, but may not keep real time",
                    name,
                    100 * one,
                    100 * self.load_limit,
                )

    def _loads(self, worker: RenderWorker) -> dict[str, AvatarLoad]:
        calls = worker.calls_by_avatar()
        costs = worker.costs
        return {
            name: AvatarLoad(costs[name], info.chunk_frames, info.max_batch, calls.get(name, 0))
            for name, info in self.pool.avatars.items()
            if name in costs
        }

    def _rooms(self, avatar: str) -> list[_WorkerRoom]:
        """Per running worker: its calls of ``avatar`` and how many it carries beside its others."""
        rooms = []
        for worker in self.pool.workers:
            if worker.state != "ready":
                continue
            loads = self._loads(worker)
            load = loads[avatar]
            if self.measured:
                others = [other for name, other in loads.items() if name != avatar]
                supported = calls_supported(load, others, self.load_limit, self.max_sessions)
            else:
                supported = self.max_sessions
            rooms.append(_WorkerRoom(worker, load.calls, supported))
        return rooms

    def render_load(self) -> float:
        """Share of its render device's time the busiest worker's calls take."""
        loads = [
            sum(load.load() for load in self._loads(worker).values())
            for worker in self.pool.workers
            if worker.state == "ready"
        ]
        return max(loads, default=0.0)

    def capacity(self) -> dict[str, dict[str, int]]:
        """Per avatar: its admitted calls, how many the running workers carry in real time beside
        the other avatars' calls, and how many more would be admitted (``max_sessions`` bounds
        all three)."""
        rooms = {name: self._rooms(name) for name in self.pool.avatars}
        calls = {name: sum(room.calls for room in avatar_rooms) for name, avatar_rooms in rooms.items()}
        total = sum(calls.values())
        report = {}
        for name, avatar_rooms in rooms.items():
            cap = self.max_sessions - (total - calls[name])
            supported = min(cap, sum(room.supported for room in avatar_rooms))
            report[name] = {
                "calls": calls[name],
                "supported": supported,
                "headroom": max(0, supported - calls[name]),
            }
        return report

    def choose(self, avatar: str) -> RenderWorker | str:
        """The worker that takes one more call of ``avatar``, or why none does."""
        rooms = self._rooms(avatar)
        if not rooms:
            return "the render workers are restarting; try again in a few seconds"
        if self.measured:
            share = self.repeats.repeated_share()
            if share > REPEATED_LIMIT:
                return (
                    f"the calls here are already falling behind real time ({100 * share:.1f}% of their "
                    f"frames repeated over the last {WINDOW_S:g} s); try again later"
                )
        report = self.capacity()[avatar]
        best = max(rooms, key=lambda room: (room.supported - room.calls, -room.calls))
        if report["headroom"] == 0 or best.supported <= best.calls:
            return (
                f"avatar {avatar!r}: this machine carries {report['supported']} such calls in real time "
                f"beside the others and has {report['calls']}; try again later"
            )
        return best.worker

    def update_metrics(self, metrics: ServerMetrics) -> None:
        """Capacity, headroom, render load and recent repeats into the server's gauges."""
        for name, report in self.capacity().items():
            metrics.capacity_calls.labels(name).set(report["supported"])
            metrics.headroom_calls.labels(name).set(report["headroom"])
        metrics.render_load.set(self.render_load())
        metrics.render_workers_ready.set(sum(w.state == "ready" for w in self.pool.workers))
        metrics.render_worker_restarts.set(self.pool.restarts)
        metrics.recent_repeated_share.set(self.repeats.repeated_share())

    def health(self) -> dict[str, object]:
        """The ``/healthz`` fields about capacity and the render workers."""
        capacity = self.capacity()
        return {
            "admission": "measured" if self.measured else "max-sessions",
            "render_load": round(self.render_load(), 3),
            "recent_repeated_share": round(self.repeats.repeated_share(), 4),
            "headroom": capacity[self.pool.default]["headroom"],
            "capacity": capacity,
            "render_workers": self.pool.health(),
        }
