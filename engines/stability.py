"""Motion Stability Index (MSI), paper Eq. 2-4: the reciprocal of the variance of landmark
accelerations, averaged over points.

For landmarks Z_t (N x 2) at frames t = 1..T:

    v_t = Z_{t+1} - Z_t  for t = 1..T-1,   v_0 = v_T = 0          (Eq. 2, zero velocity at both ends)
    a_t = v_t - v_{t-1}  for t = 1..T                              (T accelerations per point)
    sigma(a^i) = 1/(T-1) * sum_t (a_t^i - mean_t(a^i))^2           (Eq. 3)
    MSI = 1/K * sum_k 1 / (sigma(a^k) + 1e-5)                      (Eq. 4)

The paper writes sigma for a point whose acceleration is a 2-vector without saying how x and y
combine. Here each coordinate of each point is its own track (K = 2 x points), as a variance taken
over the time axis of a (T, points, 2) array gives. On real 25 fps talking heads this gives about
twice what the total variance (x + y) would, nearer the paper's values for real videos
(docs/evaluation.md). Values depend on the landmark units and the fps:
:mod:`offline_training.evaluation.msi` applies the paper's normalisation (a fixed box four mouth
widths wide, rescaled to 256 px) before calling this.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

EPSILON = 1e-5

FloatArray = npt.NDArray[np.float64]


def accelerations(tracks: npt.ArrayLike) -> FloatArray:
    """(T, K, D) accelerations of (T, K, D) point tracks, with zero velocity before the first frame
    and after the last (Eq. 2)."""
    points = np.asarray(tracks, dtype=np.float64)
    if points.ndim != 3 or points.shape[0] < 2:
        raise ValueError(f"tracks must be (T >= 2, K, D); got shape {points.shape}")
    zero = np.zeros_like(points[:1])
    velocity = np.concatenate([zero, np.diff(points, axis=0), zero])  # v_0 .. v_T, (T + 1, K, D)
    return np.diff(velocity, axis=0)


def valid_accelerations(valid: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """(T,) which accelerations use only valid frames: a_t touches frames t-1, t and t+1 (at the
    ends, the two frames that exist)."""
    ok = np.asarray(valid, dtype=bool)
    before = np.concatenate([[True], ok[:-1]])
    after = np.concatenate([ok[1:], [True]])
    result: npt.NDArray[np.bool_] = ok & before & after
    return result


def acceleration_variance(tracks: npt.ArrayLike, valid: npt.ArrayLike | None = None) -> FloatArray:
    """(K, D) variance over time of each point's acceleration, per coordinate (Eq. 3, 1/(n-1)).

    Args:
        tracks: (T, K, D) point positions, T >= 2; finite wherever ``valid``.
        valid: (T,) frames whose positions are measured (default all); accelerations that touch
            any other frame are left out rather than made up, so gaps neither add nor hide jitter.
    """
    a = accelerations(np.nan_to_num(np.asarray(tracks, dtype=np.float64)))
    keep = np.ones(len(a), dtype=bool) if valid is None else valid_accelerations(valid)
    if valid is None and not np.isfinite(np.asarray(tracks, dtype=np.float64)).all():
        raise ValueError("tracks hold NaN or infinite positions; mark them with valid=")
    if keep.sum() < 2:
        raise ValueError("fewer than 2 accelerations between measured frames")
    result: FloatArray = a[keep].var(axis=0, ddof=1)
    return result


def msi_of_variance(variance: npt.ArrayLike) -> FloatArray:
    """Eq. 4 on (..., K, D) acceleration variances: the mean over points and coordinates of
    1 / (sigma(a) + 1e-5), one value per leading index (a 0-d array for a single (K, D))."""
    result: FloatArray = np.mean(1.0 / (np.asarray(variance, dtype=np.float64) + EPSILON), axis=(-2, -1))
    return result


def motion_stability_index(tracks: npt.ArrayLike, valid: npt.ArrayLike | None = None) -> float:
    """MSI of (T, K, D) point tracks (Eq. 4): the mean over points and coordinates of
    1 / (sigma(a) + 1e-5); higher is steadier. ``valid``: see :func:`acceleration_variance`."""
    return float(msi_of_variance(acceleration_variance(tracks, valid)))
