"""How sure is a ratio of two MSIs measured on a few seconds of video? A paired block bootstrap.

MSI (paper Eq. 4) is the mean of reciprocal acceleration variances, so a few large accelerations
in a short video move it a lot: on a 6 s held-out tail, the two halves of one render can give
ratios of 1.57 and 0.83. The interval here resamples the frames' accelerations in blocks of
consecutive frames (a moving-block bootstrap, which keeps the short-range correlation of
accelerations), the same blocks from both videos (they show the same frames, so the ratio's
spread is the measurement's, not the pairing's), and reads the ratio's percentiles. A fixed seed
makes it repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engines.stability import accelerations, msi_of_variance, valid_accelerations

BLOCK_FRAMES = 10
RESAMPLES = 1000
LEVEL = 0.9
SEED = 0
_CHUNK = 100

Points = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class RatioInterval:
    """A central ``level`` interval of an MSI ratio."""

    low: float
    high: float
    level: float = LEVEL

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def msi_ratio_interval(
    ours: Points,
    real: Points,
    ours_found: Mask | None = None,
    real_found: Mask | None = None,
    block: int = BLOCK_FRAMES,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = SEED,
) -> RatioInterval:
    """Interval of MSI(ours) / MSI(real) for two tracks of the same frames.

    Args:
        ours, real: (T, K, D) point tracks of the same T frames (a render and the real video).
        ours_found, real_found: (T,) frames whose points were measured (default all);
            accelerations touching an unmeasured frame in either video are left out of both.
        block: frames per resampled block (shortened on very short videos so that at least four
            blocks fit).
        resamples: bootstrap resamples.
        level: central coverage, e.g. 0.9 for the 5th to 95th percentile.
        seed: the resampling's seed.

    Raises:
        ValueError: the tracks differ in shape, or fewer than 4 accelerations are measured in both.
    """
    ours, real = np.asarray(ours, dtype=np.float64), np.asarray(real, dtype=np.float64)
    if ours.shape != real.shape or ours.ndim != 3:
        raise ValueError(
            f"tracks must be two (T, K, D) arrays of one shape; got {ours.shape} and {real.shape}"
        )
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    keep = np.ones(len(ours), dtype=bool)
    for found in (ours_found, real_found):
        if found is not None:
            keep &= valid_accelerations(found)
    ours_a = accelerations(np.nan_to_num(ours))[keep]
    real_a = accelerations(np.nan_to_num(real))[keep]
    count = len(ours_a)
    if count < 4:
        raise ValueError(f"{count} accelerations measured in both videos; an interval needs at least 4")
    block = max(1, min(block, count // 4))
    blocks = int(np.ceil(count / block))
    rng = np.random.default_rng(seed)
    ratios: list[npt.NDArray[np.float64]] = []
    for first in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - first)
        starts = rng.integers(0, count - block + 1, size=(size, blocks))
        rows = (starts[:, :, None] + np.arange(block)[None, None]).reshape(size, -1)[:, :count]
        ratios.append(
            msi_of_variance(ours_a[rows].var(axis=1, ddof=1))
            / msi_of_variance(real_a[rows].var(axis=1, ddof=1))
        )
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(np.concatenate(ratios), [tail, 100 - tail])
    return RatioInterval(float(low), float(high), level)
