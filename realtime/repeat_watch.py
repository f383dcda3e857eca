"""Whether the calls a server carries are keeping real time right now.

Each call counts its output slots and the slots that had to repeat an earlier image
(``SessionStats.frames_out`` / ``frames_skipped``). Sampled once a second, the share of repeated
slots over the last few seconds, pooled over the calls past their first seconds (a call repeats
its first image until its first chunk is out), says whether one more call can be taken: the
measured cost model (``realtime.capacity``) predicts, this checks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW_S = 5.0
SETTLE_S = 3.0  # a call's first seconds are not judged


@dataclass(frozen=True)
class CallCount:
    """One call's counters at a sampling instant."""

    key: object
    age_s: float
    slots: int
    repeated: int


class RepeatWatch:
    """Repeated-slot share of the settled calls over the last ``window_s``."""

    def __init__(self, window_s: float = WINDOW_S, settle_s: float = SETTLE_S) -> None:
        self.window_s = window_s
        self.settle_s = settle_s
        self._history: dict[object, deque[tuple[float, int, int]]] = {}

    def sample(self, now_s: float, calls: list[CallCount]) -> None:
        """Record every call's counters at ``now_s`` (calls not listed have ended)."""
        live = {call.key for call in calls}
        for key in [key for key in self._history if key not in live]:
            del self._history[key]
        for call in calls:
            if call.age_s < self.settle_s:
                continue
            history = self._history.setdefault(call.key, deque())
            history.append((now_s, call.slots, call.repeated))
            while len(history) > 2 and history[1][0] <= now_s - self.window_s:
                history.popleft()

    def repeated_share(self) -> float:
        """Σ repeated / Σ slots over the window, of the calls sampled at least twice (0: none)."""
        slots = repeated = 0
        for history in self._history.values():
            if len(history) >= 2:
                slots += history[-1][1] - history[0][1]
                repeated += history[-1][2] - history[0][2]
        return repeated / slots if slots else 0.0
