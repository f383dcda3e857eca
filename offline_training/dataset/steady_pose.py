"""Take the landmark tracker's frame-to-frame noise out of the head pose before anything learns from it.

A tracker places each frame's landmarks a little off the true face, differently every frame, and the
per-frame similarity fit (:func:`engines.geometry.pose.fit_poses`) turns that into a head pose that
shakes by a pixel or so while the head itself moves smoothly. The renderer draws the mouth and jaw
where the face shape says, over the reference frame's real (steady) upper face, so a shaking pose
becomes a lower face that jitters against the upper face — on the Obama reference avatar it was
the largest source of jitter on lips and jaw (docs/training.md, "How steady is the result").

The reference video is known in advance, so the pose can be filtered forwards and backwards in
time at no cost to latency: a Gaussian of ``sigma`` frames over scale, translation and rotation
(averaged as matrices and projected back onto rotations), within each run of consecutive source
frames — a frame without a face breaks the run, so poses never mix across a gap.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from scipy.ndimage import gaussian_filter1d

from engines.geometry.face_model import fit_face_model
from engines.geometry.pose import HeadPose

if TYPE_CHECKING:
    from offline_training.dataset.reader import AvatarDataset

FloatArray = npt.NDArray[np.float32]


def consecutive_runs(frame_numbers: npt.NDArray[np.int64]) -> list[slice]:
    """Slices of ``frame_numbers`` (increasing) where each number is the previous one plus one."""
    if len(frame_numbers) == 0:
        return []
    breaks = np.flatnonzero(np.diff(frame_numbers) != 1) + 1
    edges = [0, *breaks.tolist(), len(frame_numbers)]
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


def _nearest_rotations(matrices: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(T, 3, 3) matrices → the nearest proper rotations (T, 3, 3) in the Frobenius sense."""
    u, _, vt = np.linalg.svd(matrices)
    flip = np.sign(np.linalg.det(u @ vt))
    u[:, :, -1] *= flip[:, None]
    nearest: npt.NDArray[np.float64] = u @ vt
    return nearest


def steady_poses(pose: HeadPose, frame_numbers: npt.NDArray[np.int64], sigma: float) -> HeadPose:
    """Low-pass the head pose over time, run by run.

    Args:
        pose: T per-frame poses (scale (T,), rotation (T, 3, 3), translation (T, 3)).
        frame_numbers: (T,) increasing source frame number of each pose; a step other than 1
            starts a new run.
        sigma: standard deviation of the Gaussian in frames; 0 returns the poses unchanged.

    Returns:
        T poses; ends of a run repeat their edge pose under the filter.
    """
    if len(frame_numbers) != len(pose):
        raise ValueError(f"{len(frame_numbers)} frame numbers for {len(pose)} poses")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 frames, got {sigma}")
    if sigma == 0:
        return pose
    scale = pose.scale.astype(np.float64)
    rotation = pose.rotation.astype(np.float64)
    translation = pose.translation.astype(np.float64)
    for run in consecutive_runs(np.asarray(frame_numbers, dtype=np.int64)):
        scale[run] = gaussian_filter1d(scale[run], sigma, axis=0, mode="nearest")
        translation[run] = gaussian_filter1d(translation[run], sigma, axis=0, mode="nearest")
        rotation[run] = _nearest_rotations(gaussian_filter1d(rotation[run], sigma, axis=0, mode="nearest"))
    return HeadPose(
        scale=scale.astype(np.float32),
        rotation=rotation.astype(np.float32),
        translation=translation.astype(np.float32),
    )


def per_frame_poses(dataset: AvatarDataset) -> HeadPose:
    """The poses `prepare` fitted to the dataset's landmarks before steadying them, one per kept frame."""
    manifest = dataset.manifest
    return fit_face_model(
        dataset.landmarks,
        manifest.tracker.layout,
        manifest.face_model.mouth_dims,
        manifest.face_model.upper_dims,
        planar=manifest.face_model.planar,
    ).pose
