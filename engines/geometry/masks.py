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
