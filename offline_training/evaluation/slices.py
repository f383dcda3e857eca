"""Jitter slices (paper Fig. 1 and 7): one pixel column through the mouth, stacked over time.

A steady mouth draws smooth bands; jitter draws jagged edges. Each panel is a 256-pixel column of
the normalised crop (the MSI box) per frame, frames left to right, above it the first crop with the
column marked; several videos sit side by side under their names.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from engines.errors import OutputError
from engines.files import atomic_output

ImageRGB = npt.NDArray[np.uint8]
LABEL_HEIGHT = 28
GAP = 8
MARK = (255, 64, 64)


def slice_panel(first_crop: ImageRGB, column: ImageRGB, column_x: int, label: str) -> ImageRGB:
    """(H, W, 3) panel: label, first crop with the slice line, the (256, T, 3) slice below it."""
    crop = first_crop.copy()
    crop[:, max(0, column_x - 1) : column_x + 1] = MARK
    width = max(crop.shape[1], column.shape[1])
    rows = [
        _label(label, width),
        _pad(crop, width),
        np.full((GAP, width, 3), 255, np.uint8),
        _pad(column, width),
    ]
    return np.concatenate(rows)


def side_by_side(panels: list[ImageRGB]) -> ImageRGB:
    """The panels left to right, padded to one height, with white gaps."""
    height = max(panel.shape[0] for panel in panels)
    padded = []
    for index, panel in enumerate(panels):
        if index:
            padded.append(np.full((height, GAP, 3), 255, np.uint8))
        extra = np.full((height - panel.shape[0], panel.shape[1], 3), 255, np.uint8)
        padded.append(np.concatenate([panel, extra]))
    return np.concatenate(padded, axis=1)


def write_png(path: Path, image: ImageRGB) -> None:
    """Write an RGB image as PNG atomically."""
    with atomic_output(path) as partial:
        if not cv2.imwrite(str(partial), np.ascontiguousarray(image[..., ::-1])):
            raise OutputError(f"{path}: cannot write the PNG")


def _label(text: str, width: int) -> ImageRGB:
    strip = np.full((LABEL_HEIGHT, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (4, LABEL_HEIGHT - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def _pad(image: ImageRGB, width: int) -> ImageRGB:
    if image.shape[1] == width:
        return image
    extra = np.full((image.shape[0], width - image.shape[1], 3), 255, np.uint8)
    return np.concatenate([image, extra], axis=1)
