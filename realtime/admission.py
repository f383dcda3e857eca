"""Whether a server takes one more call: its measured capacity and its calls' recent frames.

``Admission`` holds the policy of ``stableface serve`` (``--admission``, ``--load-limit``,
``--max-sessions``): the load model of ``realtime.capacity`` over the avatars the server has
loaded, and the ``realtime.repeat_watch`` check of the calls it carries. The server tells it the
calls it has; it answers what each avatar can still take and why a call is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from realtime.avatars import AvatarCatalog
from realtime.capacity import AvatarLoad, calls_supported, load_limit_for, probe_batch_cost
from realtime.metrics import ServerMetrics
from realtime.repeat_watch import WINDOW_S, RepeatWatch
from realtime.settings import ServerSettings

logger = logging.getLogger(__name__)
REPEATED_LIMIT = 0.01  # calls repeating more of their slots than this are not keeping real time


class Admission:
    """The server's admission policy.

    Args:
        catalog: the loaded avatars (measured here, before the server listens, unless measured
            already or ``settings.admission`` is ``max-sessions``).
        settings: ``admission``, ``load_limit`` and ``max_sessions``.
    """

    def __init__(self, catalog: AvatarCatalog, settings: ServerSettings) -> None:
        self.catalog = catalog
        self.measured = settings.admission == "measured"
        self.max_sessions = settings.max_sessions
        device = str(next(iter(catalog.engines.values())).backend.device)
        self.load_limit = settings.load_limit or load_limit_for(device)
        self.repeats = RepeatWatch()
        if self.measured:
            self._measure()

    def _measure(self) -> None:
        for engine in self.catalog.engines.values():
            if engine.scheduler.cost.batches == 0:  # a catalog may serve twice
                probe_batch_cost(engine)
        for name, engine in self.catalog.engines.items():
            one = AvatarLoad.of(engine, 1).load()
            if one > self.load_limit:
                logger.warning(
                    "avatar %s: one call takes %.0f%% of the render device here (limit %.0f%%); it is "
                    "admitted alone, but may not keep real time",
                    name,
                    100 * one,
                    100 * self.load_limit,
                )

    def _loads(self, calls: Mapping[str, int]) -> dict[str, AvatarLoad]:
        return {
            name: AvatarLoad.of(engine, calls.get(name, 0)) for name, engine in self.catalog.engines.items()
        }

    def render_load(self, calls: Mapping[str, int]) -> float:
        """Share of the render device's time ``calls`` (admitted calls by avatar) take."""
        return sum(load.load() for load in self._loads(calls).values())

    def capacity(self, calls: Mapping[str, int]) -> dict[str, dict[str, int]]:
        """Per avatar: its admitted calls, how many it can have in real time beside the other
        avatars' calls, and how many more it would admit (``max_sessions`` bounds all three)."""
        loads = self._loads(calls)
        total = sum(load.calls for load in loads.values())
        report = {}
        for name, load in loads.items():
            others = [other for key, other in loads.items() if key != name]
            cap = self.max_sessions - (total - load.calls)
            supported = calls_supported(load, others, self.load_limit, cap) if self.measured else cap
            report[name] = {
                "calls": load.calls,
                "supported": supported,
                "headroom": max(0, supported - load.calls),
            }
        return report

    def refusal(self, avatar: str, calls: Mapping[str, int]) -> str | None:
        """Why one more call of ``avatar`` cannot be admitted now (None: it can)."""
        if not self.measured:
            return None
        share = self.repeats.repeated_share()
        if share > REPEATED_LIMIT:
            return (
                f"the calls here are already falling behind real time ({100 * share:.1f}% of their frames "
                f"repeated over the last {WINDOW_S:g} s); try again later"
            )
        report = self.capacity(calls)[avatar]
        if report["headroom"] == 0:
            return (
                f"avatar {avatar!r}: this machine carries {report['supported']} such calls in real time "
                f"beside the others and has {report['calls']}; try again later"
            )
        return None

    def update_metrics(self, metrics: ServerMetrics, calls: Mapping[str, int]) -> None:
        """Capacity, headroom, render load and recent repeats into the server's gauges."""
        for name, report in self.capacity(calls).items():
            metrics.capacity_calls.labels(name).set(report["supported"])
            metrics.headroom_calls.labels(name).set(report["headroom"])
        metrics.render_load.set(self.render_load(calls))
        metrics.recent_repeated_share.set(self.repeats.repeated_share())

    def health(self, calls: Mapping[str, int], default: str) -> dict[str, object]:
        """The ``/healthz`` fields about capacity."""
        capacity = self.capacity(calls)
        return {
            "admission": "measured" if self.measured else "max-sessions",
            "render_load": round(self.render_load(calls), 3),
            "recent_repeated_share": round(self.repeats.repeated_share(), 4),
            "headroom": capacity[default]["headroom"],
            "capacity": capacity,
        }
