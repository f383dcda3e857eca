"""The "AI-generated" mark: a small, legible label in a corner of every output frame.

The paper's Discussion asks that generated video be recognisable as such. The mark is a
translucent dark rounded label with white text in the bottom-right corner, sized to the frame
(about 4% of its height), drawn once per frame size and alpha-blended into a small region, so it
costs well under a millisecond a frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
import numpy.typing as npt

ImageRGB = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]
TEXT = "AI-generated"
OPACITY = 0.62
TEXT_HEIGHT_SHARE = 0.04


@dataclass(frozen=True)
class _Overlay:
    """Pre-drawn label: where it goes and how it blends."""

    top: int
    left: int
    alpha: FloatArray  # (h, w, 1)
    colour: FloatArray  # (h, w, 3), already multiplied by alpha


@cache
def _overlay(height: int, width: int) -> _Overlay | None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    text_px = max(7.0, TEXT_HEIGHT_SHARE * height)
    scale = text_px / 22.0  # Hershey simplex capitals are about 22 px high at scale 1
    thickness = max(1, int(round(scale * 1.6)))
    (text_w, text_h), baseline = cv2.getTextSize(TEXT, font, scale, thickness)
    pad = max(2, int(round(0.45 * text_h)))
    label_w, label_h = text_w + 2 * pad, text_h + baseline + 2 * pad
    margin = max(2, int(round(0.02 * min(height, width))))
    if label_w + margin > width or label_h + margin > height:
        return None
    supersample = 4
    big_w, big_h = label_w * supersample, label_h * supersample
    radius = min(big_h // 2, 3 * pad * supersample)
    box = np.zeros((big_h, big_w), np.uint8)
    cv2.rectangle(box, (radius, 0), (big_w - radius, big_h - 1), (255,), -1)
    cv2.rectangle(box, (0, radius), (big_w - 1, big_h - radius), (255,), -1)
    for cx in (radius, big_w - radius - 1):
        for cy in (radius, big_h - radius - 1):
            cv2.circle(box, (cx, cy), radius, (255,), -1, lineType=cv2.LINE_AA)
    box_alpha = cv2.resize(box, (label_w, label_h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    ink = np.zeros((label_h, label_w), np.uint8)
    cv2.putText(ink, TEXT, (pad, pad + text_h), font, scale, (255,), thickness, lineType=cv2.LINE_AA)
    ink_alpha = ink.astype(np.float32) / 255
    background = OPACITY * box_alpha
    alpha = background + ink_alpha * (1 - background)
    white = np.float32(245.0)
    colour = (ink_alpha * white)[..., None] * np.ones(3, np.float32) + (background * (1 - ink_alpha) * 20.0)[
        ..., None
    ]
    return _Overlay(
        top=height - margin - label_h,
        left=width - margin - label_w,
        alpha=alpha[..., None].astype(np.float32),
        colour=colour.astype(np.float32),
    )


def apply_ai_mark(image: ImageRGB) -> ImageRGB:
    """``image`` (H, W, 3) uint8 RGB with the mark drawn in, in place; frames too small for a
    legible label (under about 120 px wide) are returned unmarked."""
    overlay = _overlay(image.shape[0], image.shape[1])
    if overlay is None:
        return image
    h, w = overlay.alpha.shape[:2]
    region = image[overlay.top : overlay.top + h, overlay.left : overlay.left + w].astype(np.float32)
    blended = region * (1 - overlay.alpha) + overlay.colour
    image[overlay.top : overlay.top + h, overlay.left : overlay.left + w] = np.clip(
        blended + 0.5, 0, 255
    ).astype(np.uint8)
    return image
