"""Test speech and what tests measure it with: speech with pauses, per-frame loudness, and a mouth
probe (``realtime.mouth_probe``) calibrated on generated speech the tests never send."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from offline_training.synthetic.speech import synthesize_speech
from realtime.engine import AvatarEngine
from realtime.mouth_probe import MouthProbe

FloatArray = npt.NDArray[np.float32]
CALIBRATION_SEED = 101  # the tests' speech uses other seeds


def calibrated_probe(engine: AvatarEngine, seconds: float = 10.0) -> MouthProbe:
    """A mouth probe fitted on 10 s of generated speech no test sends."""
    return MouthProbe.calibrate(engine, synthesize_speech(CALIBRATION_SEED, seconds).audio)


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
