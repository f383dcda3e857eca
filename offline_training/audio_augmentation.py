"""Audio augmentations that make one voice sound like other speakers, rooms, channels and noise.

Shared by the default avatar's generated-speech corpus
(:mod:`offline_training.default_avatar.speech_corpus`) and by ``train``'s voice augmentation of a
user's own recording (:mod:`offline_training.train.voice_augmentation`). All take (S,) float64
samples at 16 kHz and a numpy random generator, so results are deterministic from a seed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.signal import butter, fftconvolve, lfilter, resample_poly

from engines.timebase import SAMPLE_RATE_HZ
from offline_training.synthetic.speech import synthesize_speech

Signal = npt.NDArray[np.float64]


def speed_change(signal: Signal, factor: float) -> Signal:
    """Play ``signal`` ``factor`` times faster (pitch and formants up by ``factor``)."""
    up = 100
    down = max(1, int(round(up * factor)))
    return np.asarray(resample_poly(signal, up, down))


def voice(seed: int, seconds: float, rng: np.random.Generator) -> tuple[Signal, ...]:
    """A generated voice with a random speaker: (audio, per-sample opening), ``seconds`` long."""
    factor = float(rng.uniform(0.8, 1.3))
    speech = synthesize_speech(seed, seconds * factor + 0.1, SAMPLE_RATE_HZ)
    total = int(round(seconds * SAMPLE_RATE_HZ))
    audio = speed_change(speech.audio.astype(np.float64), factor)[:total]
    opening = speed_change(speech.opening.astype(np.float64), factor)[:total]
    pad = total - len(audio)
    return np.pad(audio, (0, pad)), np.clip(np.pad(opening, (0, pad)), 0.0, 1.0)


def coloured_noise(length: int, rng: np.random.Generator) -> Signal:
    """White, pink (1/f) or brown (1/f²) noise."""
    white = rng.normal(size=length)
    kind = rng.integers(0, 3)
    if kind == 0:
        return white
    spectrum = np.fft.rfft(white)
    freqs = np.maximum(np.fft.rfftfreq(length), 1.0 / length)
    spectrum /= freqs ** (0.5 if kind == 1 else 1.0)
    return np.asarray(np.fft.irfft(spectrum, n=length), dtype=np.float64)


def babble(length: int, seed: int, rng: np.random.Generator) -> Signal:
    """Several other generated voices at once, each at a random level."""
    seconds = length / SAMPLE_RATE_HZ
    voices = [
        voice(seed + 7919 * (k + 1), seconds, rng)[0] * rng.uniform(0.4, 1.0)
        for k in range(int(rng.integers(3, 7)))
    ]
    return np.asarray(np.sum(voices, axis=0), dtype=np.float64)


def reverberate(signal: Signal, rng: np.random.Generator) -> Signal:
    rt60_s = rng.uniform(0.1, 0.6)
    t = np.arange(int(rt60_s * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    response = rng.normal(size=len(t)) * np.exp(-6.9 * t / rt60_s)
    response[0] = 1.0 / rng.uniform(0.05, 0.3)  # the direct path against the reverberant tail
    wet = np.asarray(fftconvolve(signal, response)[: len(signal)], dtype=np.float64)
    scaled: Signal = wet / float(np.abs(response).sum() ** 0.5)
    return scaled


def channel(signal: Signal, rng: np.random.Generator) -> Signal:
    """A random tilt of the spectrum, or a telephone band."""
    nyquist = SAMPLE_RATE_HZ / 2
    if rng.uniform() < 0.15:
        b, a = butter(2, [300.0 / nyquist, 3400.0 / nyquist], btype="band")
        return np.asarray(lfilter(b, a, signal))
    pole = rng.uniform(-0.7, 0.7)
    return np.asarray(lfilter([1.0 - abs(pole)], [1.0, -pole], signal))


def at_snr(
    speech: Signal,
    noise: Signal,
    snr_db: float,
    active: npt.NDArray[np.bool_],
) -> Signal:
    """``noise`` scaled so the speech (where it is active) is ``snr_db`` louder."""
    speech_power = float(np.mean(speech[active] ** 2)) if active.any() else float(np.mean(speech**2))
    noise_power = float(np.mean(noise**2)) + 1e-12
    scaled: Signal = noise * np.sqrt(speech_power / noise_power / 10 ** (snr_db / 10))
    return scaled


def codec(signal: Signal, rng: np.random.Generator) -> Signal:
    """A narrow-band call: 8 kHz sampling and 8-bit μ-law (G.711), back at 16 kHz."""
    narrow = np.asarray(resample_poly(signal, 1, 2))
    peak = float(np.abs(narrow).max()) + 1e-12
    mu = 255.0
    scaled = np.clip(narrow / peak, -1.0, 1.0)
    compressed = np.sign(scaled) * np.log1p(mu * np.abs(scaled)) / np.log1p(mu)
    quantised = np.round(compressed * 127.0) / 127.0
    expanded = np.sign(quantised) * np.expm1(np.abs(quantised) * np.log1p(mu)) / mu
    wide = np.asarray(resample_poly(expanded * peak, 2, 1))[: len(signal)]
    return np.pad(wide, (0, len(signal) - len(wide)))
