"""CPBD sharpness: agreement with the reference package, response to blur, inputs it accepts and refuses."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage import data

from engines.errors import InputError
from offline_training.evaluation.sharpness import cpbd, cpbd_video


def _blur(gray: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a uint8 image, rounded back to uint8 as if saved to a file."""
    if sigma == 0:
        return gray
    blurred = np.round(gaussian_filter(gray.astype(np.float64), sigma))
    return np.clip(blurred, 0, 255).astype(np.uint8)


def _image(name: str) -> np.ndarray:
    """(H, W) uint8 grayscale test image; the astronaut as PIL's convert("L") gives it."""
    if name == "astronaut":
        return np.asarray(Image.fromarray(data.astronaut()).convert("L"))
    if name == "camera":
        return np.asarray(data.camera())
    raise ValueError(name)


# From the reference package, cpbd==1.0.7 (`cpbd.compute(image)`, with scipy 1.17.1, scikit-image
# 0.26.0 and numpy 2.4.6; numpy 1.26.4 gives the same), on exactly the uint8 images `_image` and
# `_blur` build here. Its module imports scipy.ndimage.imread (gone since SciPy 1.2) for its command
# line only, so a placeholder attribute was set before importing it; the algorithm ran unchanged.
REFERENCE = {
    ("astronaut", 0): 0.38368206916594016,
    ("astronaut", 1): 0.12656507813258275,
    ("astronaut", 2): 0.004616938392728322,
    ("astronaut", 4): 0.0,
    ("camera", 0): 0.7481657466284677,
    ("camera", 1): 0.34811843812669574,
    ("camera", 2): 0.016053141433711594,
    ("camera", 4): 0.006493506493506494,
}


@pytest.mark.parametrize(("name", "sigma"), sorted(REFERENCE))
def test_matches_the_reference_package(name: str, sigma: int) -> None:
    assert cpbd(_blur(_image(name), sigma)) == pytest.approx(REFERENCE[(name, sigma)], abs=1e-6)


def test_matches_the_reference_on_a_crop_that_is_not_whole_blocks() -> None:
    # cpbd==1.0.7 on camera()[17:317, 31:481] (300x450: the partial blocks are ignored).
    assert cpbd(data.camera()[17:317, 31:481]) == pytest.approx(0.6199726402188782, abs=1e-6)


@pytest.mark.parametrize("name", ["astronaut", "camera"])
def test_decreases_as_blur_grows_and_stays_in_unit_range(name: str) -> None:
    scores = [cpbd(_blur(_image(name), sigma)) for sigma in (0, 1, 2, 4)]
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert all(sharper >= blurrier for sharper, blurrier in itertools.pairwise(scores))
    assert scores[0] > scores[1] > scores[2]
    assert scores[0] - scores[-1] > 0.3


def test_noise_is_in_unit_range() -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(200, 300), dtype=np.uint8)
    assert 0.0 <= cpbd(noise) <= 1.0
    assert 0.0 <= cpbd(noise.astype(np.float32) + 0.25) <= 1.0


def test_flat_and_small_images_score_zero() -> None:
    # No edge to measure: 0.0, as the reference returns (its histogram stays empty).
    assert cpbd(np.full((128, 160), 90, np.uint8)) == 0.0
    assert cpbd(np.zeros((128, 128, 3), np.uint8)) == 0.0
    # Smaller than one 64x64 block: no block is scored.
    assert cpbd(np.random.default_rng(1).integers(0, 256, size=(40, 80), dtype=np.uint8)) == 0.0


def test_rgb_and_grayscale_agree() -> None:
    rgb = data.astronaut()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    assert cpbd(rgb) == pytest.approx(cpbd(gray), abs=1e-12)
    camera = data.camera()
    assert cpbd(np.repeat(camera[..., None], 3, axis=2)) == pytest.approx(cpbd(camera), abs=1e-12)
    assert cpbd(camera.astype(np.float64)) == pytest.approx(cpbd(camera), abs=1e-12)


def test_video_is_the_mean_over_sampled_frames() -> None:
    camera = np.repeat(data.camera()[:192, :256, None], 3, axis=2)
    frames = np.stack([camera, _blur(camera[..., 0], 2)[..., None].repeat(3, axis=2), camera])
    sharp, blurred = cpbd(frames[0]), cpbd(frames[1])
    assert cpbd_video(frames) == pytest.approx((2 * sharp + blurred) / 3)
    assert cpbd_video(frames, every=2) == pytest.approx(sharp)
    assert cpbd_video(list(frames[:2])) == pytest.approx((sharp + blurred) / 2)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros(100, np.uint8),
        np.zeros((2, 100, 100, 3), np.uint8),
        np.zeros((100, 100, 4), np.uint8),
        np.zeros((0, 0), np.uint8),
        np.zeros((0, 100, 3), np.uint8),
        np.full((100, 100), np.nan),
        np.full((100, 100), "a"),
    ],
    ids=["1d", "4d", "rgba", "empty", "empty-rgb", "nan", "strings"],
)
def test_bad_images_raise_one_line_input_error(image: np.ndarray) -> None:
    with pytest.raises(InputError) as raised:
        cpbd(image)
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith("cpbd:")


@pytest.mark.parametrize(
    ("frames", "every"),
    [
        (np.zeros((0, 64, 64, 3), np.uint8), 1),
        ([], 1),
        (np.zeros((2, 64, 64, 3), np.uint8), 0),
        (np.zeros((64, 64), np.uint8), 1),
    ],
    ids=["no-frames", "empty-list", "every-0", "single-image"],
)
def test_bad_videos_raise_one_line_input_error(frames: np.ndarray, every: int) -> None:
    with pytest.raises(InputError) as raised:
        cpbd_video(frames, every=every)
    assert "\n" not in str(raised.value)
