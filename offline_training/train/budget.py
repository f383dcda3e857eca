"""Training against a wall-clock budget (``stableface train --budget 20m``).

The budget covers the whole run: the three stages, the final validation, the held-out tail's
stability report and the bundle export. The stages share the time left when each begins, so a
stage that stops early on a validation plateau hands its time to the next:

- ``a2e`` may use up to ``A2E_SHARE`` of the training time; it is cheap and overfits a short clip
  within a few hundred steps, so it nearly always ends on its plateau;
- ``renderer`` gets the rest, less the ``joint`` stage's ``JOINT_SHARE`` (the paper's 100 + 20
  epochs) when the model has adaptive smoothing.

Each stage's learning rate warms up for its first ``WARMUP`` and then follows a cosine down to
``LR_FLOOR`` of its base at the stage's planned end. Time comes from an injectable clock, so the
schedule is tested without waiting.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

A2E_SHARE = 0.10
JOINT_SHARE = 1.0 / 6.0
WARMUP = 0.03
LR_FLOOR = 0.1
MIN_RESERVE_S = 2.0
RESERVE_MARGIN = 1.3  # the final phase's estimate is scaled by this, for a machine that slows down

_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$")

Clock = Callable[[], float]


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``20m``, ``1h30m`` or ``1.5h`` (a bare number: minutes).

    Raises:
        ValueError: not a duration, or not positive.
    """
    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", cleaned):
        seconds = float(cleaned) * 60.0
    else:
        match = _DURATION.fullmatch(cleaned)
        if not cleaned or match is None or not any(match.groupdict().values()):
            raise ValueError(f"{text!r} is not a duration (examples: 90s, 20m, 1h30m)")
        parts = {key: float(value) for key, value in match.groupdict().items() if value is not None}
        seconds = 3600.0 * parts.get("h", 0.0) + 60.0 * parts.get("m", 0.0) + parts.get("s", 0.0)
    if seconds <= 0:
        raise ValueError(f"{text!r}: the budget must be positive")
    return seconds


def format_seconds(seconds: float) -> str:
    """``75`` → ``1m15s``; ``3725`` → ``1h02m``."""
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.0f}s"


def lr_factor(fraction: float) -> float:
    """The learning rate over its base at ``fraction`` (0..1) of a stage: linear warm-up, then cosine."""
    if fraction < WARMUP:
        return max(fraction / WARMUP, 0.01)
    progress = min(1.0, (fraction - WARMUP) / (1.0 - WARMUP))
    return LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress))


class BudgetClock:
    """Seconds spent against a budget; ``spent`` carries time from before a resume."""

    def __init__(self, total_s: float, spent_s: float = 0.0, clock: Clock = time.monotonic) -> None:
        self.total_s = total_s
        self._clock = clock
        self._origin = clock() - spent_s

    def elapsed(self) -> float:
        return self._clock() - self._origin

    def left(self) -> float:
        return self.total_s - self.elapsed()


def stage_seconds(stage: str, time_left_s: float, stages_after: int, has_joint: bool) -> float:
    """How long ``stage`` may train, given the training time left when it begins.

    Args:
        stage: ``a2e``, ``renderer`` or ``joint``.
        time_left_s: training time left (the budget less the time spent and the final phase's reserve).
        stages_after: how many stages still follow this one.
        has_joint: whether a ``joint`` stage follows the renderer.
    """
    time_left_s = max(0.0, time_left_s)
    if stages_after == 0:
        return time_left_s
    if stage == "a2e":
        return A2E_SHARE * time_left_s
    if stage == "renderer" and has_joint:
        return (1.0 - JOINT_SHARE) * time_left_s
    return time_left_s / (stages_after + 1)


@dataclass
class StageWindow:
    """A stage's slot on the budget clock: the learning-rate schedule and the stop rule read it."""

    start_s: float
    planned_s: float

    def fraction(self, elapsed_s: float) -> float:
        """Share of the planned time used, 0..1."""
        if self.planned_s <= 0:
            return 1.0
        return min(1.0, max(0.0, (elapsed_s - self.start_s) / self.planned_s))

    @property
    def end_s(self) -> float:
        return self.start_s + self.planned_s


@dataclass
class Plateau:
    """Stops a stage when its validation metric has not improved for ``patience`` validations,
    once ``min_fraction`` of the stage has passed.

    Attributes:
        higher_is_better: SSIM (True) or an error (False).
        min_delta: the smallest change that counts as an improvement.
    """

    patience: int
    higher_is_better: bool
    min_delta: float
    min_fraction: float = 0.0
    best: float = math.nan
    since_best: int = 0

    def update(self, value: float) -> bool:
        """Record a validation; returns whether it is the best so far (by any margin)."""
        if math.isnan(value):
            self.since_best += 1
            return False
        if math.isnan(self.best):
            self.best, self.since_best = value, 0
            return True
        gain = value - self.best if self.higher_is_better else self.best - value
        if gain > 0:
            if gain > self.min_delta:
                self.since_best = 0
            else:
                self.since_best += 1
            self.best = value
            return True
        self.since_best += 1
        return False

    def stalled(self, fraction: float) -> bool:
        return fraction >= self.min_fraction and self.since_best >= self.patience


class StepTimer:
    """A running estimate of one step's seconds, so a stage never starts a step it cannot finish."""

    def __init__(self) -> None:
        self.mean_s = 0.0
        self.count = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        weight = max(0.1, 1.0 / self.count)
        self.mean_s += weight * (seconds - self.mean_s)
