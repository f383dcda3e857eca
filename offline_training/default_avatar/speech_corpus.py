"""Augmented generated speech for training audio-to-expression to follow voices it never heard.

The project's toy voice (``offline_training.synthetic.speech``) is one narrow speaker in a quiet
room. Each utterance here changes the speaker (tempo and vocal-tract length by resampling, which
moves pitch and formants together), the room (reverberation from a decaying noise impulse
response), the channel (a random spectral tilt, sometimes a telephone band), the level, and adds
noise: white, pink or brown at 0-30 dB SNR, or a babble of other generated voices at 5-30 dB.
The mouth-opening target is always the main voice's, so the network learns to open the mouth
for speech and not for noise. Everything is deterministic from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engines.timebase import FPS, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME
from offline_training.audio_augmentation import at_snr, babble, channel, coloured_noise, reverberate, voice

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Utterance:
    """One training utterance.

    Attributes:
        audio: (S,) float32 mono at 16 kHz, S = 640·T.
        opening: (T,) float32 in [0, 1], the main voice's mouth opening per 25 fps frame.
    """

    audio: FloatArray
    opening: FloatArray


def make_utterance(seed: int, seconds: float) -> Utterance:
    """One augmented utterance, deterministic from ``seed``.

    Args:
        seed: random seed of the voice, the room, the channel and the noise.
        seconds: length, rounded down to whole 25 fps frames.

    Returns:
        The audio and its per-frame mouth-opening target.
    """
    rng = np.random.default_rng([seed, 9_041])
    frames = int(seconds * FPS)
    total = frames * SAMPLES_PER_FRAME
    audio, opening = voice(seed, total / SAMPLE_RATE_HZ, rng)
    active = opening > 0.05
    if rng.uniform() < 0.4:
        audio = reverberate(audio, rng)
    audio = channel(audio, rng)
    roll = rng.uniform()
    if roll < 0.45:
        audio = audio + at_snr(audio, coloured_noise(total, rng), rng.uniform(0.0, 30.0), active)
    elif roll < 0.7:
        audio = audio + at_snr(audio, babble(total, seed, rng), rng.uniform(5.0, 30.0), active)
    audio = audio + rng.normal(size=total) * 10 ** (rng.uniform(-90.0, -60.0) / 20)
    peak = float(np.abs(audio).max()) + 1e-12
    audio *= 10 ** (rng.uniform(-30.0, -1.0) / 20) / peak
    per_frame = opening[: frames * (total // frames)].reshape(frames, -1).mean(1)
    return Utterance(audio=audio.astype(np.float32), opening=per_frame.astype(np.float32))
