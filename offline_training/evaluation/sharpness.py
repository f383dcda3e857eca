"""CPBD, the no-reference sharpness metric talking-face papers report for generated frames.

CPBD (cumulative probability of blur detection) is from Narvekar & Karam, "A No-Reference Image Blur
Metric Based on the Cumulative Probability of Blur Detection (CPBD)", IEEE TIP 20(9), 2011. It is the
share of an image's edges a viewer would *not* see as blurred: higher is sharper, in [0, 1].

This is an independent, vectorised implementation that follows the numerics of the Python reference
papers use, the PyPI package ``cpbd`` (1.0.7, github.com/0x64746b/python-cpbd, a port of the authors'
MATLAB code), so the values agree with it exactly on the same grayscale image:

1. Canny edges (``skimage.feature.canny`` with its defaults, on the 0..255 image) decide which 64x64
   blocks are edge blocks: more than 0.2% of the block's pixels are edges.
2. Vertical edges from a Sobel filter (the Octave ``edge(..., 'sobel', [], 'vertical')`` recipe:
   normalised horizontal-derivative kernel, threshold ``2 * sqrt(mean(strength^2))`` on the squared
   strength, simple thinning) are the edges whose widths are measured.
3. The width of an edge pixel whose gradient direction (``np.gradient``, quantised to 45 degrees) is
   horizontal is measured Marziliano-style along its row: from the pixel, walk left and right while
   the intensity keeps changing monotonically in the gradient's sense (at most 100 steps a side).
   Edge pixels with any other gradient direction, or on the image border, get no width.
4. A block's contrast is ``int(max - min)`` of its pixels; its just-noticeable-blur width is 5 when the
   contrast is at most 50, else 3.
5. Every measured edge in an edge block gets a probability of blur detection
   ``P = 1 - exp(-(w / w_JNB) ** 3.6)``, binned to the nearest percent (101 bins, ties to even);
   CPBD is the share of those edges in bins 0..63, that is ``P`` up to ``P_JNB = 63%``.

Only whole 64x64 blocks count: the bottom and right remainders of an image whose size is not a
multiple of 64 are ignored, and an image smaller than one block has no blocks. An image with no
measured edge in any edge block (a flat image, one smaller than 64x64, or one blurred beyond any
detectable edge) gets 0.0, as in the reference: nothing in it is seen as sharp.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy.ndimage import convolve
from skimage.feature import canny

from engines.errors import InputError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

BLOCK_HEIGHT = 64
BLOCK_WIDTH = 64
EDGE_BLOCK_SHARE = 0.002
BETA = 3.6
JNB_WIDTH_LOW_CONTRAST = 5.0
JNB_WIDTH_HIGH_CONTRAST = 3.0
LOW_CONTRAST_MAX = 50
P_JNB_LAST_BIN = 63
MAX_WALK = 100
# Sobel kernel for the derivative along x (vertical edges), normalised to unit L1 norm as Octave does.
SOBEL_X = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]) / 8.0


def cpbd(image: npt.ArrayLike) -> float:
    """CPBD sharpness of one image, in [0, 1]; higher is sharper.

    Args:
        image: (H, W) grayscale on the 0..255 scale (any real dtype; uint8 as read from a file), or
            (H, W, 3) uint8 RGB. RGB is turned into ITU-R BT.601 luma
            (0.299 R + 0.587 G + 0.114 B) with PIL's ``convert("L")`` fixed-point rounding, which is
            what the reference's ``imread(path, mode="L")`` reads, so an RGB frame scores the same
            as its grayscale file would with the reference.

    Returns:
        The share of measured edges whose probability of blur detection is at most 63%; 0.0 when
        the image has no measured edge in an edge block (e.g. a flat image, or one under 64x64).

    Raises:
        InputError: the image is empty, not (H, W) or (H, W, 3), not real-valued, or not finite.
    """
    gray = _grayscale(image)
    height, width = gray.shape
    if height < BLOCK_HEIGHT or width < BLOCK_WIDTH:
        return 0.0
    edge_widths = _marziliano_widths(_sobel_vertical_edges(gray), gray)
    canny_edges: BoolArray = canny(gray)  # type: ignore[no-untyped-call]  # skimage ships no stubs here
    return _cumulative_probability(gray, canny_edges, edge_widths)


def cpbd_video(frames: npt.NDArray[np.generic] | Sequence[npt.ArrayLike], every: int = 1) -> float:
    """Mean CPBD over the frames of a video.

    Args:
        frames: (T, H, W, 3) uint8 RGB frames, (T, H, W) grayscale frames, or a sequence of
            frames each as :func:`cpbd` accepts.
        every: score every ``every``-th frame only (frames 0, every, 2 * every, ...), to save time on
            long videos; 1 scores all of them.

    Returns:
        The mean of the per-frame CPBD values, in [0, 1].

    Raises:
        InputError: no frames, ``every`` below 1, or a frame :func:`cpbd` rejects.
    """
    if isinstance(every, bool) or not isinstance(every, int | np.integer) or every < 1:
        raise InputError(f"cpbd_video: every must be a positive integer, got {every!r}")
    if isinstance(frames, np.ndarray) and frames.ndim not in (3, 4):
        raise InputError(f"cpbd_video: frames must be (T, H, W, 3) or (T, H, W), got shape {frames.shape}")
    if len(frames) == 0:
        raise InputError("cpbd_video: no frames to score")
    scores = [cpbd(frame) for frame in frames[::every]]
    return float(np.mean(scores))


def _grayscale(image: npt.ArrayLike) -> FloatArray:
    """(H, W) float64 on the 0..255 scale from an (H, W) or (H, W, 3) image."""
    array = np.asarray(image)
    gray: FloatArray
    if array.dtype.kind not in "biuf":
        raise InputError(f"cpbd: image must hold real numbers, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 3:
        if array.dtype == np.uint8:
            # PIL's convert("L"): BT.601 weights in 16-bit fixed point, rounded to the nearest integer.
            rgb = array.astype(np.int64)
            luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
            gray = luma.astype(np.float64)
        else:
            gray = array.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    elif array.ndim == 2:
        gray = array.astype(np.float64)
    else:
        raise InputError(f"cpbd: image must be (H, W) grayscale or (H, W, 3) RGB, got shape {array.shape}")
    if gray.size == 0:
        raise InputError(f"cpbd: image is empty, shape {array.shape}")
    if not np.isfinite(gray).all():
        raise InputError("cpbd: image holds NaN or infinite values")
    return gray


def _sobel_vertical_edges(gray: FloatArray) -> BoolArray:
    """(H, W) thinned vertical Sobel edges, as Octave's ``edge(gray, 'sobel', [], 'vertical')``."""
    strength = np.square(convolve(gray, SOBEL_X))
    # Octave compares the squared strength with twice the RMS strength; kept as is for agreement.
    strength[strength <= 2.0 * np.sqrt(np.mean(strength))] = 0.0
    padded = np.pad(strength, 1)
    centre = padded[1:-1, 1:-1]
    horizontal_peak = (centre > padded[1:-1, :-2]) & (centre > padded[1:-1, 2:])
    vertical_peak = (centre > padded[:-2, 1:-1]) & (centre > padded[2:, 1:-1])
    edges: BoolArray = horizontal_peak | vertical_peak
    return edges


def _run_lengths(steps: BoolArray) -> IntArray:
    """(H, W) length of the run of True in ``steps`` that ends at each column (0 where False)."""
    columns = np.broadcast_to(np.arange(steps.shape[1]), steps.shape)
    last_false = np.maximum.accumulate(np.where(steps, -1, columns), axis=1)
    runs: IntArray = (columns - last_false).astype(np.int64)
    return runs


def _marziliano_widths(edges: BoolArray, gray: FloatArray) -> FloatArray:
    """(H, W) edge widths along rows at horizontal-gradient edge pixels, 0 elsewhere."""
    height, width = gray.shape
    gradients = np.gradient(gray)
    gradient_y = np.asarray(gradients[0], dtype=np.float64)
    gradient_x = np.asarray(gradients[1], dtype=np.float64)
    angles = np.zeros_like(gray)
    nonzero_x = gradient_x != 0
    angles[nonzero_x] = np.arctan2(gradient_y[nonzero_x], gradient_x[nonzero_x]) * (180 / np.pi)
    angles[~nonzero_x & (gradient_y == np.pi / 2)] = 90.0  # a quirk of the reference, kept for agreement
    widths = np.zeros_like(gray)
    if not angles.any():  # the reference measures nothing when no pixel has a gradient direction
        return widths
    quantized = 45 * np.round(angles / 45)

    # rises[r, c]: gray[r, c - 1] < gray[r, c]; falls[r, c]: gray[r, c - 1] > gray[r, c] (False at c = 0).
    left_step = np.zeros((height, 1), dtype=bool)
    rises = np.concatenate([left_step, gray[:, :-1] < gray[:, 1:]], axis=1)
    falls = np.concatenate([left_step, gray[:, :-1] > gray[:, 1:]], axis=1)
    # Walking left from column c: steps at columns c-1, c-2, ...; walking right: the steps between
    # columns c+1 and c+2, c+2 and c+3, ..., which are rises/falls at c+2, c+3, ...
    rising_run_left = _run_lengths(rises)
    falling_run_left = _run_lengths(falls)
    # One False column past the right border, so that the walk from column W - 2 stops at once.
    right_step = np.zeros((height, 1), dtype=bool)
    rising_run_right = _run_lengths(np.concatenate([rises, right_step], axis=1)[:, ::-1])[:, ::-1]
    falling_run_right = _run_lengths(np.concatenate([falls, right_step], axis=1)[:, ::-1])[:, ::-1]

    inner = (slice(1, height - 1), slice(1, width - 1))
    left = (slice(1, height - 1), slice(0, width - 2))  # run ending at column c - 1
    right = (slice(1, height - 1), slice(3, width + 1))  # run starting at column c + 2
    on_edge = edges[inner]
    # Gradient at 0 degrees: intensity rises left to right, so walk while it keeps falling leftwards
    # and rising rightwards; at +-180 degrees the other way round.
    rising = on_edge & (quantized[inner] == 0)
    falling = on_edge & ((quantized[inner] == 180) | (quantized[inner] == -180))
    rising_width = (
        2 + np.minimum(rising_run_left[left], MAX_WALK) + np.minimum(rising_run_right[right], MAX_WALK)
    )
    falling_width = (
        2 + np.minimum(falling_run_left[left], MAX_WALK) + np.minimum(falling_run_right[right], MAX_WALK)
    )
    widths[inner] = np.where(rising, rising_width, np.where(falling, falling_width, 0))
    return widths


def _cumulative_probability(gray: FloatArray, canny_edges: BoolArray, edge_widths: FloatArray) -> float:
    """CPBD from the Canny edge map, the (H, W) edge widths and the image, over whole 64x64 blocks."""
    rows = gray.shape[0] // BLOCK_HEIGHT
    cols = gray.shape[1] // BLOCK_WIDTH

    def blocks(array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """(rows, cols, 64 * 64) view of the whole blocks of an (H, W) array."""
        cropped = array[: rows * BLOCK_HEIGHT, : cols * BLOCK_WIDTH]
        tiled = cropped.reshape(rows, BLOCK_HEIGHT, cols, BLOCK_WIDTH).swapaxes(1, 2)
        return tiled.reshape(rows, cols, BLOCK_HEIGHT * BLOCK_WIDTH)

    block_pixels = blocks(gray).astype(np.float64)
    is_edge_block = blocks(canny_edges).sum(axis=2) > BLOCK_HEIGHT * BLOCK_WIDTH * EDGE_BLOCK_SHARE
    contrast = np.floor(block_pixels.max(axis=2) - block_pixels.min(axis=2))
    jnb = np.where(contrast <= LOW_CONTRAST_MAX, JNB_WIDTH_LOW_CONTRAST, JNB_WIDTH_HIGH_CONTRAST)

    block_widths = blocks(edge_widths).astype(np.float64)
    measured = (block_widths != 0) & is_edge_block[..., None]
    ratios = block_widths / jnb[..., None]
    blur_probability = 1 - np.exp(-(np.abs(ratios[measured]) ** BETA))
    total = blur_probability.size
    if total == 0:
        return 0.0
    bins = np.round(blur_probability * 100)  # round half to even, as Python's round() in the reference
    return float(np.count_nonzero(bins <= P_JNB_LAST_BIN) / total)
