"""Reading how far the avatar's mouth is open from video pixels alone (received WebRTC frames,
screenshots), for any avatar: a linear probe calibrated on the avatar's own offline render.

Calibration renders unrelated synthetic speech through the streaming pipeline, where each frame's
true mouth geometry is known, and keeps the pixels whose brightness follows it (|corr| near the
best). A frame's score is the signed mean of those pixels' z-scores: high = open. The test audio
is never seen by the calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from offline_training.synthetic.speech import synthesize_speech
from realtime.engine import AvatarEngine
from realtime.offline import stream_file

ImageRGB = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]


@dataclass
class MouthProbe:
    mean: FloatArray
    std: FloatArray
    weights: FloatArray  # (H, W) sign of the correlation on the selected pixels, 0 elsewhere
    shape: tuple[int, int]

    @classmethod
    def calibrate(cls, engine: AvatarEngine, seed: int = 101, seconds: float = 10.0) -> MouthProbe:
        frames = list(stream_file(engine, synthesize_speech(seed, seconds).audio))
        images = np.stack([_grey(f.image) for f in frames if f.image is not None])
        opening = np.array([f.mouth_opening for f in frames], np.float32)
        opening = (opening - opening.mean()) / (opening.std() + 1e-6)
        mean, std = images.mean(0), images.std(0) + 1e-3
        corr = (((images - mean) / std) * opening[:, None, None]).mean(0)
        weights = np.where(np.abs(corr) > 0.6 * np.abs(corr).max(), np.sign(corr), 0).astype(np.float32)
        return cls(mean, std, weights, images.shape[1:])  # type: ignore[arg-type]

    def score(self, image: ImageRGB) -> float:
        """How open the mouth in ``image`` looks (any size: resized to the avatar's frames)."""
        grey = _grey(image)
        if grey.shape != self.shape:
            grey = cv2.resize(grey, (self.shape[1], self.shape[0]), interpolation=cv2.INTER_AREA)
        z = (grey - self.mean) / self.std
        return float((z * self.weights).sum() / np.abs(self.weights).sum())


def _grey(image: ImageRGB) -> FloatArray:
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32)


def speech_with_pauses(
    seed: int, pattern_s: list[tuple[str, float]], rate_hz: int = 16_000
) -> tuple[FloatArray, FloatArray]:
    """Synthetic speech and silence in the given order, e.g. [("silence", 1), ("speech", 2)].

    Returns:
        (S,) float32 audio at ``rate_hz`` and (S,) float32 1 where speech, 0 where silence.
    """
    pieces, voiced = [], []
    for index, (kind, seconds) in enumerate(pattern_s):
        count = int(seconds * rate_hz)
        if kind == "speech":
            piece = synthesize_speech(seed + index, seconds, rate_hz).audio[:count]
        else:
            piece = np.zeros(count, np.float32)
        pieces.append(piece)
        voiced.append(np.full(len(piece), float(kind == "speech"), np.float32))
    return np.concatenate(pieces), np.concatenate(voiced)


def envelope_per_frame(audio: FloatArray, rate_hz: int, fps: float = 25.0) -> FloatArray:
    """(T,) RMS of each 1/fps slice."""
    per = int(rate_hz / fps)
    count = len(audio) // per
    return np.sqrt((audio[: count * per].reshape(count, per) ** 2).mean(1)).astype(np.float32)
