"""The mouth mask used for erosion: the lower face from the jaw line up to under the nose."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

DEFAULT_DILATION = 0.03


def mouth_mask(
    points: npt.NDArray[np.float32],
    mouth_region: npt.NDArray[np.int32],
    size: int,
    dilation: float = DEFAULT_DILATION,
) -> npt.NDArray[np.uint8]:
    """Fill the hull of the lower-face points and dilate it.

    Args:
        points: (N, >=2) landmarks in crop pixels.
        mouth_region: (Km,) indices of the lower-face points (jaw, cheeks, lips, chin).
        size: crop side S.
        dilation: dilation radius as a fraction of S.

    Returns:
        (S, S) uint8 mask, 255 inside.
    """
    mask = np.zeros((size, size), dtype=np.uint8)
    region = np.round(points[mouth_region, :2] * 16).astype(np.int32)
    hull = cv2.convexHull(region)
    cv2.fillConvexPoly(mask, np.asarray(hull), (255,), lineType=cv2.LINE_AA, shift=4)
    radius = max(1, round(dilation * size))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    dilated = np.asarray(cv2.dilate(mask, kernel))
    return np.where(dilated >= 128, 255, 0).astype(np.uint8)


def paste_mask(
    mask: npt.NDArray[np.uint8], grow: float = 0.05, feather: float = 0.04
) -> npt.NDArray[np.float32]:
    """Blend weights for pasting a render back: the mouth mask grown and feathered.

    Only the region the renderer had to invent is taken from the render; the rest of the crop
    stays the untouched reference pixels.

    Args:
        mask: (S, S) uint8 mouth mask, 255 inside.
        grow: dilation radius, fraction of S.
        feather: Gaussian feather sigma, fraction of S.

    Returns:
        (S, S) float32 weights in [0, 1].
    """
    size = mask.shape[0]
    radius = max(1, round(grow * size))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    grown = np.asarray(cv2.dilate(mask, kernel), dtype=np.float32) / 255.0
    sigma = max(0.5, feather * size)
    blurred = np.asarray(cv2.GaussianBlur(grown, (0, 0), sigma), dtype=np.float32)
    return np.clip(blurred, 0.0, 1.0)
