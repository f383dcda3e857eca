"""How far the avatar's mouth is open, read from video pixels alone (received WebRTC frames,
screenshots, encoded files), for any avatar: a linear probe calibrated on the avatar's own render.

Calibration renders speech through the streaming pipeline, where each frame's true mouth geometry
(the inner-lip area) is known, and fits a ridge regression from the frames' grey levels to it:
on the pixels whose brightness follows the opening at all (|corr| ≥ a quarter of the best), on
the clean frames and on JPEG-compressed copies (what a video codec leaves), with the ridge's
strength chosen on the last quarter of the calibration speech held out. A frame's score is the
predicted opening in standard deviations of the calibration render: high = open.

A sign-weighted mean of the most correlated pixels (this probe's first form) read small openings
backwards (a thin dark gap between the teeth moves other pixels than a wide-open jaw): it followed
the default avatar's geometry with r = 0.68 on held-out speech, the ridge with r = 0.98
(docs/benchmarks.md). Calibrate on speech unrelated to what is measured later (tests and
benchmarks use generated speech with another seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from realtime.engine import AvatarEngine
from realtime.file_stream import stream_file

ImageRGB = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]
SELECT_FRACTION = 0.25  # candidate pixels: |corr| at least this share of the best pixel's
MAX_SIDE_PX = 320  # frames are read at most this large (memory; the mouth stays tens of pixels)
BLUR_SIGMA_PX = 1.0  # grey levels are smoothed first, so codec noise weighs little
JPEG_QUALITY = 35  # the degraded copies the probe also learns from
RIDGE_STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # times the mean squared norm of a frame
HELD_OUT_FRACTION = 0.25


@dataclass
class MouthProbe:
    """A calibrated pixel probe.

    Attributes:
        mean, std: (H, W) per-pixel statistics of the smoothed grey levels over the calibration
            render (H, W: the avatar's frame, shrunk to at most ``MAX_SIDE_PX``).
        weights: (H, W) the ridge regression's weight on each pixel's z-score, 0 off the mouth.
    """

    mean: FloatArray
    std: FloatArray
    weights: FloatArray

    @classmethod
    def calibrate(cls, engine: AvatarEngine, speech: FloatArray) -> MouthProbe:
        """Render (S,) 16 kHz ``speech`` with ``engine`` and fit the probe to its mouth geometry.

        Runs on the calling thread: use an engine no live session shares.
        """
        frames = [f for f in stream_file(engine, speech) if f.image is not None]
        opening = np.array([f.inner_lip_area for f in frames], np.float64)
        images = [f.image for f in frames if f.image is not None]
        return cls.fit(images, opening)

    @classmethod
    def fit(cls, images: list[ImageRGB], opening: npt.NDArray[np.float64]) -> MouthProbe:
        """Fit the probe to (T,) mouth openings of T (H, W, 3) RGB frames in time order."""
        if len(images) < 8 or len(images) != len(opening):
            raise ValueError(f"need at least 8 frames with an opening each, got {len(images)}/{len(opening)}")
        shape = _probe_shape(images[0].shape[:2])
        clean = np.stack([_prepare(image, shape) for image in images])
        degraded = np.stack([_prepare(_jpeg(image), shape) for image in images])
        pixels = np.concatenate([clean, degraded])  # (2T, H, W)
        target = np.concatenate([opening, opening])
        target = (target - target.mean()) / (target.std() + 1e-9)
        mean, std = pixels.mean(0), pixels.std(0) + 1.0
        z = (pixels - mean) / std
        corr = np.abs((z * target[:, None, None]).mean(0))
        selected = corr >= SELECT_FRACTION * corr.max()
        design = z[:, selected].astype(np.float64)  # (2T, K)
        held_out = _held_out(len(images))
        strength = _ridge_strength(design, target, held_out)
        coefficients = _ridge_dual(design, target, strength)
        weights = np.zeros(shape, np.float32)
        weights[selected] = (design.T @ coefficients).astype(np.float32)
        return cls(mean.astype(np.float32), std.astype(np.float32), weights)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) the probe reads frames at."""
        return self.mean.shape[0], self.mean.shape[1]

    def score(self, image: ImageRGB) -> float:
        """How open the mouth in (H', W', 3) RGB ``image`` looks (any size: resized to the probe's)."""
        z: FloatArray = (_prepare(image, self.shape) - self.mean) / self.std
        return float((z * self.weights).sum())


def _probe_shape(frame_shape: tuple[int, ...]) -> tuple[int, int]:
    height, width = int(frame_shape[0]), int(frame_shape[1])
    scale = min(1.0, MAX_SIDE_PX / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _prepare(image: ImageRGB, shape: tuple[int, int]) -> FloatArray:
    """(H', W', 3) RGB → (H, W) smoothed grey levels at the probe's size."""
    grey = np.asarray(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY), np.float32)
    if grey.shape != shape:
        grey = np.asarray(cv2.resize(grey, (shape[1], shape[0]), interpolation=cv2.INTER_AREA), np.float32)
    return np.asarray(cv2.GaussianBlur(grey, (0, 0), BLUR_SIGMA_PX), np.float32)


def _jpeg(image: ImageRGB) -> ImageRGB:
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode a calibration frame")
    return np.asarray(cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED), np.uint8)


def _held_out(frames: int) -> npt.NDArray[np.bool_]:
    """(2T,) the last quarter of the clean frames and of their degraded copies."""
    start = frames - max(1, int(HELD_OUT_FRACTION * frames))
    one = np.zeros(frames, bool)
    one[start:] = True
    return np.concatenate([one, one])


def _ridge_dual(
    design: npt.NDArray[np.float64], target: npt.NDArray[np.float64], strength: float
) -> npt.NDArray[np.float64]:
    """(N,) dual coefficients a of ridge regression: weights = designᵀ a (N rows ≪ K pixels)."""
    gram = design @ design.T
    penalty = strength * np.trace(gram) / len(gram)
    return np.linalg.solve(gram + penalty * np.eye(len(gram)), target)


def _ridge_strength(
    design: npt.NDArray[np.float64], target: npt.NDArray[np.float64], held_out: npt.NDArray[np.bool_]
) -> float:
    """The ridge strength whose fit on the kept frames best predicts the held-out ones."""
    kept = ~held_out

    def held_out_corr(strength: float) -> float:
        coefficients = _ridge_dual(design[kept], target[kept], strength)
        predicted = design[held_out] @ (design[kept].T @ coefficients)
        if predicted.std() == 0 or target[held_out].std() == 0:
            return -1.0
        return float(np.corrcoef(predicted, target[held_out])[0, 1])

    return max(RIDGE_STRENGTHS, key=held_out_corr)
