"""Augmented erosion (paper III-C2): make training look like inference's mismatch.

At inference the eroded reference frame and the face shape come from different frames (the shape
follows new audio). Training sees both from the same frame unless we disturb them: noise on the
mouth parameters before the face shape is rasterised, and a random erode/dilate, shift and rotation
of the mouth mask that blanks the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class ErosionSettings:
    """Strength of the augmentation.

    Attributes:
        param_noise_probability: chance a sequence gets noisy mouth parameters.
        param_noise_std: noise std in units of each parameter's std over the video.
        mask_probability: chance a frame's mask is morphed, shifted and rotated.
        max_morph: largest erode/dilate radius, fraction of the crop side.
        max_shift: largest shift, fraction of the crop side.
        max_rotation_deg: largest rotation about the mask's centre.
    """

    param_noise_probability: float = 0.5
    param_noise_std: float = 0.15
    mask_probability: float = 0.8
    max_morph: float = 0.04
    max_shift: float = 0.04
    max_rotation_deg: float = 10.0


def noisy_mouth_params(
    params: npt.NDArray[np.float32],
    std: npt.NDArray[np.float32],
    rng: np.random.Generator,
    settings: ErosionSettings,
) -> npt.NDArray[np.float32]:
    """(T, Em) parameters plus Gaussian noise of ``param_noise_std`` x each parameter's std."""
    noise = rng.normal(size=params.shape).astype(np.float32) * std[None] * settings.param_noise_std
    return (params + noise).astype(np.float32)


def augment_mask(
    mask: npt.NDArray[np.uint8], rng: np.random.Generator, settings: ErosionSettings
) -> npt.NDArray[np.uint8]:
    """Randomly erode or dilate, shift and rotate a (S, S) uint8 mask; the result stays inside the frame.

    Returns:
        (S, S) uint8 mask, 255 inside.
    """
    size = mask.shape[0]
    out = mask
    radius = int(round(rng.uniform(-settings.max_morph, settings.max_morph) * size))
    if radius:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(radius) + 1, 2 * abs(radius) + 1))
        out = np.asarray(cv2.dilate(out, kernel) if radius > 0 else cv2.erode(out, kernel), dtype=np.uint8)
    ys, xs = np.nonzero(out)
    centre = (float(xs.mean()), float(ys.mean())) if len(xs) else (size / 2, size / 2)
    angle = rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg)
    matrix = np.asarray(cv2.getRotationMatrix2D(centre, angle, 1.0), dtype=np.float64)
    matrix[:, 2] += rng.uniform(-settings.max_shift, settings.max_shift, size=2) * size
    warped = cv2.warpAffine(out, matrix, (size, size), flags=cv2.INTER_NEAREST, borderValue=(0,))
    return np.where(np.asarray(warped) >= 128, 255, 0).astype(np.uint8)
