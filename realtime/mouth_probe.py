"""How far the avatar's mouth is open, read from video pixels alone (received WebRTC frames,
screenshots, encoded files), for any avatar: a linear probe calibrated on the avatar's own render.

Calibration renders speech through the streaming pipeline, where each frame's true mouth geometry
is known, and keeps the pixels whose brightness follows it (|corr| near the best). A frame's score
is the signed mean of those pixels' z-scores: high = open. Calibrate on speech unrelated to what is
measured later (tests and benchmarks use generated speech with another seed).
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
SELECT_FRACTION = 0.6  # keep pixels whose |corr| is at least this share of the best pixel's


@dataclass
class MouthProbe:
    """A calibrated pixel probe.

    Attributes:
        mean, std: (H, W) per-pixel grey level statistics over the calibration render.
        weights: (H, W) sign of the correlation on the selected pixels, 0 elsewhere.
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
        images = np.stack([_grey(f.image) for f in frames if f.image is not None])  # (T, H, W)
        opening = np.array([f.inner_lip_area for f in frames], np.float32)
        opening = (opening - opening.mean()) / (opening.std() + 1e-6)
        mean, std = images.mean(0), images.std(0) + 1e-3
        corr = (((images - mean) / std) * opening[:, None, None]).mean(0)
        selected = np.abs(corr) > SELECT_FRACTION * np.abs(corr).max()
        weights = np.where(selected, np.sign(corr), 0).astype(np.float32)
        return cls(mean.astype(np.float32), std.astype(np.float32), weights)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the frames it was calibrated on."""
        return self.mean.shape[0], self.mean.shape[1]

    def score(self, image: ImageRGB) -> float:
        """How open the mouth in (H', W', 3) RGB ``image`` looks (any size: resized to the avatar's)."""
        grey: FloatArray = _grey(image)
        if grey.shape != self.shape:
            size = (self.shape[1], self.shape[0])
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA).astype(np.float32)
        z: FloatArray = (grey - self.mean) / self.std
        return float((z * self.weights).sum() / np.abs(self.weights).sum())


def _grey(image: ImageRGB) -> FloatArray:
    grey: FloatArray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return grey
