"""Frame-pair metrics against a reference video: SSIM and NLMD (paper section IV-A)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from skimage.metrics import structural_similarity

from engines.errors import InputError

ImageRGB = npt.NDArray[np.uint8]


def ssim(image: ImageRGB, reference: ImageRGB) -> float:
    """SSIM of two (H, W, 3) uint8 RGB images (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5,
    K1 0.01, K2 0.03, per channel, averaged)."""
    if image.shape != reference.shape:
        raise InputError(f"SSIM needs images of one size; got {image.shape} and {reference.shape}")
    return float(
        structural_similarity(  # type: ignore[no-untyped-call]
            image,
            reference,
            channel_axis=2,
            data_range=255,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def nlmd(points: npt.NDArray[np.float64], reference: npt.NDArray[np.float64], image_size: float) -> float:
    """Normalised landmark distance: mean Euclidean distance between matching points over the image
    size (the paper divides by the resolution, e.g. 256).

    Args:
        points: (T, K, 2) landmarks of the video in pixels.
        reference: (T, K, 2) landmarks of the reference in the same pixel frame.
        image_size: the side the distances are divided by.
    """
    if points.shape != reference.shape:
        raise InputError(f"NLMD needs matching landmark tracks; got {points.shape} and {reference.shape}")
    return float(np.linalg.norm(points - reference, axis=-1).mean() / image_size)
