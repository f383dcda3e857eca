"""Similarity transforms between landmark sets (Umeyama 1991)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class HeadPose:
    """Per-frame similarity transforms from the canonical face frame to image pixels.

    ``image_points[t] = scale[t] * canonical[t] @ rotation[t].T + translation[t]``

    Attributes:
        scale: (T,) float32.
        rotation: (T, 3, 3) float32 proper rotations.
        translation: (T, 3) float32 pixels.
    """

    scale: FloatArray
    rotation: FloatArray
    translation: FloatArray

    def __len__(self) -> int:
        return int(self.scale.shape[0])

    def apply(self, canonical: FloatArray) -> FloatArray:
        """Place canonical shapes into the image.

        Args:
            canonical: (T, N, 3) shapes in the canonical frame.

        Returns:
            (T, N, 3) points in image pixels.
        """
        posed = np.einsum("tnj,tij->tni", canonical, self.rotation) * self.scale[:, None, None]
        placed: FloatArray = (posed + self.translation[:, None, :]).astype(np.float32)
        return placed

    def remove(self, image_points: FloatArray) -> FloatArray:
        """Inverse of :meth:`apply`: image points (T, N, 3) into the canonical frame (T, N, 3)."""
        centred = (image_points - self.translation[:, None, :]) / self.scale[:, None, None]
        canonical: FloatArray = np.einsum("tni,tij->tnj", centred, self.rotation).astype(np.float32)
        return canonical

    def select(self, indices: npt.NDArray[np.int64]) -> HeadPose:
        """The poses of the given frames."""
        return HeadPose(self.scale[indices], self.rotation[indices], self.translation[indices])


def fit_similarity(
    source: FloatArray, target: FloatArray, dims: int = 3
) -> tuple[float, FloatArray, FloatArray]:
    """Least-squares similarity ``target ≈ s * source @ R.T + t``.

    Args:
        source: (K, 3) points.
        target: (K, 3) points.
        dims: 3 for a full 3D fit, 2 to fit in the image plane only (z ignored, R about z).

    Returns:
        (s, R (3, 3), t (3,)).
    """
    src = source[:, :dims].astype(np.float64)
    dst = target[:, :dims].astype(np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_s, dst - mu_d
    var_s = float((src_c**2).sum()) / len(src)
    cov = dst_c.T @ src_c / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.eye(dims)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1, -1] = -1.0
    rot_d = u @ sign @ vt
    scale = float(np.trace(np.diag(sigma) @ sign) / max(var_s, 1e-12))
    trans_d = mu_d - scale * rot_d @ mu_s
    rotation = np.eye(3)
    rotation[:dims, :dims] = rot_d
    translation = np.zeros(3)
    translation[:dims] = trans_d
    if dims == 2:
        translation[2] = float(target[:, 2].mean() - scale * source[:, 2].mean())
    return scale, rotation.astype(np.float32), translation.astype(np.float32)


def fit_poses(shapes: FloatArray, reference: FloatArray, rigid: tuple[int, ...], dims: int = 3) -> HeadPose:
    """Fit one similarity per frame from ``reference`` to each frame's rigid points.

    Args:
        shapes: (T, N, 3) image points.
        reference: (N, 3) canonical shape.
        rigid: indices of the points the fit uses.
        dims: see :func:`fit_similarity`.

    Returns:
        The T poses.
    """
    idx = list(rigid)
    fits = [fit_similarity(reference[idx], frame[idx], dims) for frame in shapes]
    return HeadPose(
        scale=np.array([f[0] for f in fits], dtype=np.float32),
        rotation=np.stack([f[1] for f in fits]).astype(np.float32),
        translation=np.stack([f[2] for f in fits]).astype(np.float32),
    )
