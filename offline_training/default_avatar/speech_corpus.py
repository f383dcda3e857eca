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
from scipy.signal import butter, fftconvolve, lfilter, resample_poly

from engines.timebase import FPS, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME
from offline_training.synthetic.speech import synthesize_speech

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


def _speed_change(signal: npt.NDArray[np.float64], factor: float) -> npt.NDArray[np.float64]:
    """Play ``signal`` ``factor`` times faster (pitch and formants up by ``factor``)."""
    up = 100
    down = max(1, int(round(up * factor)))
    return np.asarray(resample_poly(signal, up, down))


def _voice(seed: int, seconds: float, rng: np.random.Generator) -> tuple[npt.NDArray[np.float64], ...]:
    """A generated voice with a random speaker: (audio, per-sample opening), ``seconds`` long."""
    factor = float(rng.uniform(0.8, 1.3))
    speech = synthesize_speech(seed, seconds * factor + 0.1, SAMPLE_RATE_HZ)
    total = int(round(seconds * SAMPLE_RATE_HZ))
    audio = _speed_change(speech.audio.astype(np.float64), factor)[:total]
    opening = _speed_change(speech.opening.astype(np.float64), factor)[:total]
    pad = total - len(audio)
    return np.pad(audio, (0, pad)), np.clip(np.pad(opening, (0, pad)), 0.0, 1.0)


def _coloured_noise(length: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """White, pink (1/f) or brown (1/f²) noise."""
    white = rng.normal(size=length)
    kind = rng.integers(0, 3)
    if kind == 0:
        return white
    spectrum = np.fft.rfft(white)
    freqs = np.maximum(np.fft.rfftfreq(length), 1.0 / length)
    spectrum /= freqs ** (0.5 if kind == 1 else 1.0)
    return np.asarray(np.fft.irfft(spectrum, n=length), dtype=np.float64)


def _babble(length: int, seed: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Several other generated voices at once, each at a random level."""
    seconds = length / SAMPLE_RATE_HZ
    voices = [
        _voice(seed + 7919 * (k + 1), seconds, rng)[0] * rng.uniform(0.4, 1.0)
        for k in range(int(rng.integers(3, 7)))
    ]
    return np.asarray(np.sum(voices, axis=0), dtype=np.float64)


def _reverberate(signal: npt.NDArray[np.float64], rng: np.random.Generator) -> npt.NDArray[np.float64]:
    rt60_s = rng.uniform(0.1, 0.6)
    t = np.arange(int(rt60_s * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    response = rng.normal(size=len(t)) * np.exp(-6.9 * t / rt60_s)
    response[0] = 1.0 / rng.uniform(0.05, 0.3)  # the direct path against the reverberant tail
    wet = np.asarray(fftconvolve(signal, response)[: len(signal)], dtype=np.float64)
    scaled: npt.NDArray[np.float64] = wet / float(np.abs(response).sum() ** 0.5)
    return scaled


def _channel(signal: npt.NDArray[np.float64], rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """A random tilt of the spectrum, or a telephone band."""
    nyquist = SAMPLE_RATE_HZ / 2
    if rng.uniform() < 0.15:
        b, a = butter(2, [300.0 / nyquist, 3400.0 / nyquist], btype="band")
        return np.asarray(lfilter(b, a, signal))
    pole = rng.uniform(-0.7, 0.7)
    return np.asarray(lfilter([1.0 - abs(pole)], [1.0, -pole], signal))


def _at_snr(
    speech: npt.NDArray[np.float64],
    noise: npt.NDArray[np.float64],
    snr_db: float,
    active: npt.NDArray[np.bool_],
) -> npt.NDArray[np.float64]:
    """``noise`` scaled so the speech (where it is active) is ``snr_db`` louder."""
    speech_power = float(np.mean(speech[active] ** 2)) if active.any() else float(np.mean(speech**2))
    noise_power = float(np.mean(noise**2)) + 1e-12
    scaled: npt.NDArray[np.float64] = noise * np.sqrt(speech_power / noise_power / 10 ** (snr_db / 10))
    return scaled


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
    audio, opening = _voice(seed, total / SAMPLE_RATE_HZ, rng)
    active = opening > 0.05
    if rng.uniform() < 0.4:
        audio = _reverberate(audio, rng)
    audio = _channel(audio, rng)
    roll = rng.uniform()
    if roll < 0.45:
        audio = audio + _at_snr(audio, _coloured_noise(total, rng), rng.uniform(0.0, 30.0), active)
    elif roll < 0.7:
        audio = audio + _at_snr(audio, _babble(total, seed, rng), rng.uniform(5.0, 30.0), active)
    audio = audio + rng.normal(size=total) * 10 ** (rng.uniform(-90.0, -60.0) / 20)
    peak = float(np.abs(audio).max()) + 1e-12
    audio *= 10 ** (rng.uniform(-30.0, -1.0) / 20) / peak
    per_frame = opening[: frames * (total // frames)].reshape(frames, -1).mean(1)
    return Utterance(audio=audio.astype(np.float32), opening=per_frame.astype(np.float32))
