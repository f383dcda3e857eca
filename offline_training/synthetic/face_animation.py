"""Animating scikit-image's astronaut portrait: the jaw drops and the mouth opens on demand.

The portrait (``skimage.data.astronaut()``, Eileen Collins, a NASA photograph in the public
domain, shipped with scikit-image) stays still but for the lower face, which a smooth warp moves
down by the requested opening, revealing a dark mouth with a hint of teeth; a slow small head
motion (shift and rotation, the background following) gives pose estimation something to do.
Landmark positions below were read once from MediaPipe Face Mesh on the portrait.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

ImageRGB = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]

# Portrait pixel coordinates (512 x 512) of the face, from MediaPipe Face Mesh.
MOUTH_CENTRE = (223.5, 146.5)
MOUTH_HALF_WIDTH = 21.5
CHIN_Y = 177.0
JAW_HALF_WIDTH = 34.0
FACE_CENTRE = (225.0, 125.0)
FACE_WINDOW = 200.0  # side of the portrait square shown in the output frame
# jaw drop at full opening, portrait pixels (11 left the avatar's jaw steadier than any real clip's)
MAX_DROP_PX = 15.0
# Below the dropped chin the motion fades out over this many portrait pixels, so the neck at the
# avatar's crop edge (about 20 px below the chin) stays put: over 28 px it moved with the jaw, and
# the pasted crop showed a seam there.
NECK_FADE_PX = 10.0

MOUTH_COLOUR = np.array([52.0, 18.0, 22.0])
TEETH_COLOUR = np.array([225.0, 215.0, 200.0])


@cache
def astronaut() -> ImageRGB:
    """(512, 512, 3) uint8 RGB portrait, read-only."""
    from skimage import data

    image = np.ascontiguousarray(data.astronaut(), dtype=np.uint8)  # type: ignore[no-untyped-call]
    image.setflags(write=False)
    return image


@dataclass(frozen=True)
class HeadMotion:
    """Small rigid motion of the head for one frame (portrait pixels and degrees)."""

    dx: float
    dy: float
    angle_deg: float


def head_motion_track(seed: int, frames: int, fps: float) -> list[HeadMotion]:
    """Slow, smooth head motion: sums of a few low-frequency sines with random phases."""
    rng = np.random.default_rng(seed + 1_000_003)
    t = np.arange(frames) / fps

    def wander(amplitude: float) -> npt.NDArray[np.float64]:
        freqs = rng.uniform(0.05, 0.4, size=3)
        phases = rng.uniform(0, 2 * np.pi, size=3)
        weights = rng.uniform(0.3, 1.0, size=3)
        signal = (weights[:, None] * np.sin(2 * np.pi * freqs[:, None] * t[None] + phases[:, None])).sum(0)
        scaled: npt.NDArray[np.float64] = amplitude * signal / weights.sum()
        return scaled

    dx, dy, angle = wander(4.0), wander(3.0), wander(2.0)
    return [HeadMotion(float(a), float(b), float(c)) for a, b, c in zip(dx, dy, angle, strict=True)]


def _smoothstep(x: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    clipped = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    return np.asarray(clipped * clipped * (3 - 2 * clipped), dtype=np.float64)


# Only this window of the portrait changes when the mouth opens.
ROI_X = (int(MOUTH_CENTRE[0] - 2.5 * JAW_HALF_WIDTH), int(MOUTH_CENTRE[0] + 2.5 * JAW_HALF_WIDTH))
ROI_Y = (int(MOUTH_CENTRE[1] - 30), int(CHIN_Y + MAX_DROP_PX + NECK_FADE_PX + 12))


@cache
def _grid() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    ys, xs = np.mgrid[ROI_Y[0] : ROI_Y[1], ROI_X[0] : ROI_X[1]].astype(np.float32)
    return xs, ys


def open_mouth(portrait: ImageRGB, opening: float) -> ImageRGB:
    """The portrait with its mouth opened by ``opening`` in [0, 1] (0 leaves it unchanged).

    Args:
        portrait: (512, 512, 3) uint8 RGB.
        opening: 0 closed, 1 wide open.

    Returns:
        (512, 512, 3) uint8 RGB.
    """
    if opening <= 1e-3:
        return portrait.copy()
    xs, ys = _grid()
    cx, cy = MOUTH_CENTRE
    drop = MAX_DROP_PX * float(np.clip(opening, 0.0, 1.0))
    half_width = MOUTH_HALF_WIDTH * (0.62 + 0.25 * opening)
    across = np.exp(-0.5 * ((xs - cx) / JAW_HALF_WIDTH) ** 4)
    # The lower face steps down sharply only where the opening's ellipse hides the step; beside the
    # lips the skin stretches over a ramp (slope < 1, so no fold) instead of tearing, which drew a
    # dark line out of each mouth corner that the renderer learnt as streaks.
    in_opening = _smoothstep((half_width - np.abs(xs - cx)) / 4.0)
    ramp = 1.5 + (1.0 - in_opening) * 1.8 * drop
    below = _smoothstep((ys - cy) / ramp) * (1.0 - _smoothstep((ys - CHIN_Y - drop) / NECK_FADE_PX))
    displacement = (drop * across * below).astype(np.float32)
    lifted = (0.12 * drop * across * (1.0 - _smoothstep((cy - ys) / 10.0)) * (ys < cy)).astype(np.float32)
    map_y = ys - displacement + lifted
    warped = cv2.remap(portrait, xs, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    # The opening between the lips: an ellipse spanning the gap the warp made.
    half_height = 0.5 * drop
    centre_y = cy + 0.5 * drop
    inside = ((xs - cx) / half_width) ** 2 + ((ys - centre_y) / max(half_height, 0.5)) ** 2
    alpha = np.clip(1.5 * (1.0 - inside), 0.0, 1.0)[..., None]
    teeth_band = np.clip(1.0 - (ys - (cy + 0.5)) / max(0.28 * drop, 0.6), 0.0, 1.0)[..., None]
    cavity = MOUTH_COLOUR + teeth_band * (TEETH_COLOUR - MOUTH_COLOUR) * 0.8
    blended = warped.astype(np.float32) * (1 - alpha) + cavity.astype(np.float32) * alpha
    out = portrait.copy()
    out[ROI_Y[0] : ROI_Y[1], ROI_X[0] : ROI_X[1]] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out


def frame_from_portrait(portrait: ImageRGB, motion: HeadMotion, size: int) -> ImageRGB:
    """Move the head by ``motion`` and cut the face window out at ``size`` x ``size``."""
    cx, cy = FACE_CENTRE
    scale = size / FACE_WINDOW
    rotation = np.asarray(cv2.getRotationMatrix2D((cx, cy), motion.angle_deg, 1.0), dtype=np.float64)
    rotation[:, 2] += (motion.dx, motion.dy)
    to_output = np.array(
        [[scale, 0, (FACE_WINDOW / 2 - cx) * scale], [0, scale, (FACE_WINDOW / 2 - cy) * scale]]
    )
    matrix = to_output @ np.vstack([rotation, [0, 0, 1]])
    frame = cv2.warpAffine(
        portrait,
        matrix,
        (size, size),
        flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    return np.asarray(frame, dtype=np.uint8)
