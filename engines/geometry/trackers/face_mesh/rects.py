"""Rotated face rectangles, as MediaPipe's face-mesh graph computes and uses them.

Coordinates are normalised to the image (x by its width, y by its height); rotations are radians,
positive clockwise on screen, as in MediaPipe's ``NormalizedRect``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

# The face-mesh graph widens every rectangle by this much and makes it square in pixels.
ROI_SCALE = 1.5


@dataclass(frozen=True)
class NormRect:
    """A rotated rectangle in normalised image coordinates."""

    x_center: float
    y_center: float
    width: float
    height: float
    rotation: float = 0.0


def normalize_radians(angle: float) -> float:
    """``angle`` wrapped into [-pi, pi)."""
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def rect_from_box(
    box: tuple[float, float, float, float],
    rotation_from: tuple[float, float],
    rotation_to: tuple[float, float],
    image_size: tuple[int, int],
) -> NormRect:
    """The face rectangle of a box, turned so the line between two keypoints is horizontal.

    Args:
        box: (xmin, ymin, width, height), normalised.
        rotation_from: (x, y) normalised keypoint at the start of the rotation vector.
        rotation_to: (x, y) normalised keypoint at its end.
        image_size: (width, height) in pixels.

    Returns:
        The box's rectangle, widened by :data:`ROI_SCALE` and made square in pixels.
    """
    width_px, height_px = image_size
    xmin, ymin, width, height = box
    dx = (rotation_to[0] - rotation_from[0]) * width_px
    dy = (rotation_to[1] - rotation_from[1]) * height_px
    rotation = normalize_radians(0.0 - math.atan2(-dy, dx))
    long_side = max(width * width_px, height * height_px)
    return NormRect(
        x_center=xmin + width / 2,
        y_center=ymin + height / 2,
        width=long_side / width_px * ROI_SCALE,
        height=long_side / height_px * ROI_SCALE,
        rotation=rotation,
    )


def rect_from_landmarks(points: FloatArray, start: int, end: int, image_size: tuple[int, int]) -> NormRect:
    """The next frame's face rectangle from this frame's landmarks.

    Args:
        points: (N, 2+) normalised landmarks.
        start, end: indices of the points whose line sets the rotation (the outer eye corners).
        image_size: (width, height) in pixels.
    """
    low = points[:, :2].min(axis=0)
    high = points[:, :2].max(axis=0)
    box = (float(low[0]), float(low[1]), float(high[0] - low[0]), float(high[1] - low[1]))
    return rect_from_box(
        box,
        (float(points[start, 0]), float(points[start, 1])),
        (float(points[end, 0]), float(points[end, 1])),
        image_size,
    )


def crop_to_tensor(
    image: npt.NDArray[np.uint8],
    rect: NormRect,
    size: int,
    value_range: tuple[float, float],
    border_zero: bool,
) -> FloatArray:
    """The rectangle's pixels resampled to a (1, size, size, 3) float tensor.

    The rectangle's corners map to the tensor's corners (pixel edges, not centres), bilinear,
    the image's edge pixels repeated outside it unless ``border_zero`` (then black).

    Args:
        image: (H, W, 3) uint8 RGB.
        rect: the region, normalised to ``image``.
        size: output side S.
        value_range: (low, high) that 0 and 255 map to.
        border_zero: fill outside the image with 0 instead of repeating its edge.
    """
    height_px, width_px = image.shape[:2]
    rotated = (
        (rect.x_center * width_px, rect.y_center * height_px),
        (rect.width * width_px, rect.height * height_px),
        rect.rotation * 180.0 / math.pi,
    )
    source = cv2.boxPoints(rotated).astype(np.float32)
    target = np.array([[0, size], [0, 0], [size, 0], [size, size]], dtype=np.float32)
    projection = cv2.getPerspectiveTransform(source, target)
    border = cv2.BORDER_CONSTANT if border_zero else cv2.BORDER_REPLICATE
    warped = cv2.warpPerspective(image, projection, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)
    low, high = value_range
    tensor = warped.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low)
    return tensor[None]


def project_points(local: FloatArray, rect: NormRect) -> FloatArray:
    """Points normalised to a rectangle's crop, back in normalised image coordinates.

    Args:
        local: (N, 3) points with x, y in [0, 1] of the crop and z in crop widths.
        rect: the rectangle the crop was taken from.

    Returns:
        (N, 3) float32: x, y normalised to the image, z in image widths.
    """
    cos, sin = math.cos(rect.rotation), math.sin(rect.rotation)
    x = local[:, 0] - 0.5
    y = local[:, 1] - 0.5
    out = np.empty_like(local, dtype=np.float32)
    out[:, 0] = (cos * x - sin * y) * rect.width + rect.x_center
    out[:, 1] = (sin * x + cos * y) * rect.height + rect.y_center
    out[:, 2] = local[:, 2] * rect.width
    return out
