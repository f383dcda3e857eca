"""Is a trained avatar as steady as its person? MSI of the rendered held-out tail beside the real one.

``stableface train`` ends with this report: the held-out tail (never trained on) is rendered from
its own speech on its own reference frames (same head motion, so only the mouth differs), and the
lips' and jaw's MSI (paper III-D) of the render are read beside the real tail's, with every
tracker given. MSI rewards over-smoothing as much as it punishes jitter, so the target is a band:
within ``TOLERANCE`` of the real tail, on both sides. Every ratio comes with its 90% interval
(:mod:`offline_training.evaluation.msi_interval`): a held-out tail of a few seconds measures a
ratio only to about ±0.2-0.3, wider than the band, and the report says so rather than let one
number pass for a verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engines.errors import InputError
from engines.geometry.trackers import LandmarkTracker
from offline_training.dataset import AvatarDataset
from offline_training.evaluation.ablation import TailRender, render_tail, tail_indices, truth_frames
from offline_training.evaluation.msi import NormalisedTracks, track_normalised
from offline_training.evaluation.msi_interval import RatioInterval, msi_ratio_interval

TOLERANCE = 0.10

ImageRGB = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class TailStability:
    """MSI of lips and jaw on the rendered and the real held-out tail, under one tracker, and the
    90% intervals of their ratios."""

    tracker: str
    frames: int
    rendered_lip: float
    rendered_jaw: float
    real_lip: float
    real_jaw: float
    lip_interval: RatioInterval
    jaw_interval: RatioInterval

    def ratio(self, part: str) -> float:
        """Rendered over real MSI of ``lip`` or ``jaw`` (1: as steady as the person)."""
        rendered, real = (
            (self.rendered_lip, self.real_lip) if part == "lip" else (self.rendered_jaw, self.real_jaw)
        )
        return rendered / real if real > 0 else math.nan

    def verdict(self, part: str) -> str:
        """``within ±10%``, ``below`` (jitterier than the person) or ``above`` (stiffer)."""
        ratio = self.ratio(part)
        if math.isnan(ratio):
            return "not measured"
        if ratio < 1 - TOLERANCE:
            return "below"
        if ratio > 1 + TOLERANCE:
            return "above"
        return f"within ±{TOLERANCE:.0%}"

    def interval(self, part: str) -> RatioInterval:
        """The 90% interval of :meth:`ratio` for ``lip`` or ``jaw``."""
        return self.lip_interval if part == "lip" else self.jaw_interval

    def decided(self, part: str) -> bool:
        """Whether the tail is long enough to tell: the ratio's interval lies wholly inside the
        band or wholly outside it."""
        interval = self.interval(part)
        low, high = 1 - TOLERANCE, 1 + TOLERANCE
        return (low <= interval.low and interval.high <= high) or interval.high < low or interval.low > high

    def lines(self) -> list[str]:
        lines = []
        for part, rendered, real in (
            ("lip", self.rendered_lip, self.real_lip),
            ("jaw", self.rendered_jaw, self.real_jaw),
        ):
            interval = self.interval(part)
            undecided = (
                ""
                if self.decided(part)
                else " (the interval crosses the band's edge: too short a tail to tell)"
            )
            lines.append(
                f"MSI {part:<3} ({self.tracker}, {self.frames} frames): rendered {rendered:.3f}, "
                f"real {real:.3f}, ratio {self.ratio(part):.2f} "
                f"[{interval.level:.0%}: {interval.low:.2f}-{interval.high:.2f}] — "
                f"{self.verdict(part)}{undecided}"
            )
        return lines

    def metrics(self) -> dict[str, float]:
        """Flat entries for ``metrics.jsonl`` and ``report.json``."""
        prefix = f"tail/{self.tracker}"
        return {
            f"{prefix}/msi_lip": self.rendered_lip,
            f"{prefix}/msi_jaw": self.rendered_jaw,
            f"{prefix}/real_msi_lip": self.real_lip,
            f"{prefix}/real_msi_jaw": self.real_jaw,
            f"{prefix}/msi_lip_ratio": self.ratio("lip"),
            f"{prefix}/msi_jaw_ratio": self.ratio("jaw"),
            f"{prefix}/msi_lip_ratio_low": self.lip_interval.low,
            f"{prefix}/msi_lip_ratio_high": self.lip_interval.high,
            f"{prefix}/msi_jaw_ratio_low": self.jaw_interval.low,
            f"{prefix}/msi_jaw_ratio_high": self.jaw_interval.high,
        }


def tail_stability(
    bundle_path: Path, dataset: AvatarDataset, trackers: list[LandmarkTracker], device: str = "cpu"
) -> list[TailStability]:
    """Render the held-out tail with the avatar in ``bundle_path`` and compare its MSI with the real tail's.

    The bundle must keep every dataset frame as reference (``train`` without ``--reference-frames``).

    Raises:
        InputError: the tail is too short, the bundle lacks reference frames, or a tracker finds no
            face in either video.
    """
    return compare_tail(render_tail(bundle_path, dataset, device), dataset, trackers)


def compare_tail(
    render: TailRender, dataset: AvatarDataset, trackers: list[LandmarkTracker]
) -> list[TailStability]:
    """MSI of lips and jaw on a rendered tail (``render.frames`` (T, S, S, 3)) and on the real one,
    with the ratios' 90% intervals.

    Raises:
        InputError: a tracker finds no face in either video, or too few frames with a face in both.
    """
    indices = tail_indices(dataset)
    truth = truth_frames(dataset, indices, render.frames.shape[1])
    rendered = render.frames[: len(truth)]
    results = []
    for tracker in trackers:
        ours = track_normalised(iter(rendered), tracker)
        real = track_normalised(iter(truth), tracker)
        results.append(
            TailStability(
                tracker=tracker.name,
                frames=len(truth),
                rendered_lip=ours.msi_lip(),
                rendered_jaw=ours.msi_jaw(),
                real_lip=real.msi_lip(),
                real_jaw=real.msi_jaw(),
                lip_interval=_ratio_interval(ours, real, "lips"),
                jaw_interval=_ratio_interval(ours, real, "jaw"),
            )
        )
    return results


def _ratio_interval(ours: NormalisedTracks, real: NormalisedTracks, part: str) -> RatioInterval:
    points = list(getattr(ours.anchors, part))
    try:
        return msi_ratio_interval(ours.points[:, points], real.points[:, points], ours.found, real.found)
    except ValueError as exc:  # faces missing in different frames of the two videos
        raise InputError(f"the tail's {part} MSI ratio has no interval: {exc}") from exc
