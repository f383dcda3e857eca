"""Speech-like audio whose syllables say how wide the mouth should be.

A source-filter toy voice: a glottal sawtooth at a slowly varying pitch, shaped by formant
resonators of a random vowel per syllable, with short noise bursts for consonants, grouped in
phrases separated by pauses. Every syllable also yields a mouth-opening target (its loudness
envelope times the vowel's openness), so a face animated with it mouths the audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.signal import butter, lfilter

from engines.timebase import SAMPLE_RATE_HZ

FloatArray = npt.NDArray[np.float32]

# (F1, F2, F3) in Hz and how open the mouth is for each vowel.
VOWELS: dict[str, tuple[tuple[float, float, float], float]] = {
    "a": ((730.0, 1090.0, 2440.0), 1.0),
    "e": ((530.0, 1840.0, 2480.0), 0.7),
    "i": ((270.0, 2290.0, 3010.0), 0.35),
    "o": ((570.0, 840.0, 2410.0), 0.75),
    "u": ((300.0, 870.0, 2240.0), 0.4),
}
BANDWIDTHS_HZ = (80.0, 100.0, 140.0)


@dataclass(frozen=True)
class SyntheticSpeech:
    """Audio and the mouth opening that belongs to it.

    Attributes:
        audio: (S,) float32 mono in [-1, 1].
        opening: (S,) float32 in [0, 1], the mouth-opening target per sample.
        sample_rate_hz: rate of both.
    """

    audio: FloatArray
    opening: FloatArray
    sample_rate_hz: int

    def opening_per_frame(self, fps: float) -> FloatArray:
        """(T,) mean opening over each video frame's samples, T = floor(S * fps / rate)."""
        per = int(round(self.sample_rate_hz / fps))
        count = len(self.opening) // per
        frames: FloatArray = self.opening[: count * per].reshape(count, per).mean(1).astype(np.float32)
        return frames


def _resonate(
    signal: npt.NDArray[np.float64], freq: float, bandwidth: float, rate: int
) -> npt.NDArray[np.float64]:
    """Second-order resonator (Klatt) with unit gain at DC."""
    r = np.exp(-np.pi * bandwidth / rate)
    c = -(r**2)
    b = 2 * r * np.cos(2 * np.pi * freq / rate)
    a = 1 - b - c
    return np.asarray(lfilter([a], [1.0, -b, -c], signal))


def _envelope(length: int, rate: int, attack_s: float, release_s: float) -> npt.NDArray[np.float64]:
    env = np.ones(length)
    attack = min(length // 2, int(attack_s * rate))
    release = min(length // 2, int(release_s * rate))
    if attack:
        env[:attack] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, attack))
    if release:
        env[-release:] = 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, release))
    return env


def synthesize_speech(seed: int, duration_s: float, sample_rate_hz: int = SAMPLE_RATE_HZ) -> SyntheticSpeech:
    """Phrases of syllables and pauses filling ``duration_s`` seconds, deterministic from ``seed``.

    Args:
        seed: random seed (voice pitch, syllables, timing).
        duration_s: length of the result.
        sample_rate_hz: output rate.

    Returns:
        The audio with its per-sample mouth-opening target.
    """
    rng = np.random.default_rng(seed)
    total = int(round(duration_s * sample_rate_hz))
    audio = np.zeros(total)
    opening = np.zeros(total)
    base_f0 = rng.uniform(90.0, 220.0)
    noise_hp = butter(2, 2500.0 / (sample_rate_hz / 2), btype="high")
    position = int(rng.uniform(0.15, 0.4) * sample_rate_hz)
    while position < total:
        syllables = int(rng.integers(2, 7))
        phrase_start = position
        for index in range(syllables):
            length = int(rng.uniform(0.14, 0.3) * sample_rate_hz)
            end = min(total, position + length)
            if end - position < 400:
                break
            count = end - position
            vowel = str(rng.choice(list(VOWELS)))
            formants, openness = VOWELS[vowel]
            # Falling intonation over the phrase, a little wobble inside the syllable.
            t = np.arange(count) / sample_rate_hz
            declination = 1.0 - 0.15 * (position - phrase_start) / (syllables * 0.25 * sample_rate_hz)
            f0 = (
                base_f0
                * declination
                * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6)))
            )
            phase = np.cumsum(f0 / sample_rate_hz) + rng.uniform()
            source = 2.0 * (phase % 1.0) - 1.0 + 0.02 * rng.normal(size=count)
            voiced = sum(
                _resonate(source, f, bw, sample_rate_hz) * weight
                for f, bw, weight in zip(formants, BANDWIDTHS_HZ, (1.0, 0.6, 0.3), strict=True)
            )
            env = _envelope(count, sample_rate_hz, 0.04, 0.06) * rng.uniform(0.6, 1.0)
            segment = voiced * env
            if rng.uniform() < 0.6:
                burst = min(count // 3, int(rng.uniform(0.02, 0.05) * sample_rate_hz))
                noise = np.asarray(lfilter(*noise_hp, rng.normal(size=burst))) * _envelope(
                    burst, sample_rate_hz, 0.005, 0.01
                )
                segment[:burst] = segment[:burst] * 0.3 + 0.5 * noise
            audio[position:end] += segment
            opening[position:end] = np.maximum(opening[position:end], env * openness)
            position = end + int(rng.uniform(0.0, 0.06) * sample_rate_hz) * (index < syllables - 1)
        position += int(rng.uniform(0.25, 0.8) * sample_rate_hz)
    peak = float(np.abs(audio).max())
    if peak > 0:
        audio *= 0.5 / peak
    return SyntheticSpeech(
        audio=audio.astype(np.float32),
        opening=np.clip(opening, 0, 1).astype(np.float32),
        sample_rate_hz=sample_rate_hz,
    )
