"""A weights-free audio-visual sync measure: how well, and at what lag, a mouth follows the speech.

The speech envelope is each video frame's energy in the speech band (300–3400 Hz, the telephone
band) in dB, floored 50 dB under the loudest frame (silence and near-silence count alike). The
band matters: below it lie the voice's fundamental, hum and room rumble, which carry loudness but
not articulation (on the project's real recordings a broadband envelope lowered the correlation
of a well-synced mouth by 0.1 to 0.25). The mouth-opening track is correlated with it (Pearson)
at every lag within the search range; the best lag is refined to a fraction of a frame by a
parabola through the correlation peak. A positive offset means the mouth moves *after* the sound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engines.errors import InputError

FloatArray = npt.NDArray[np.float32]
ENVELOPE_RANGE_DB = 50.0
SPEECH_BAND_HZ = (300.0, 3400.0)
BAND_TAPER_HZ = 50.0


@dataclass(frozen=True)
class AvSync:
    """Result of :func:`av_sync`.

    Attributes:
        offset_ms: lag of the mouth behind the sound at the best correlation (negative: ahead).
        correlation: Pearson correlation at that lag.
        correlation_at_zero: Pearson correlation without any shift.
    """

    offset_ms: float
    correlation: float
    correlation_at_zero: float


def speech_band(audio: FloatArray, sample_rate_hz: int) -> npt.NDArray[np.float64]:
    """(S,) ``audio`` band-passed to 300–3400 Hz with zero phase (FFT mask, 50 Hz cosine edges)."""
    length = len(audio)
    spectrum = np.fft.rfft(audio.astype(np.float64), n=length)
    freqs = np.fft.rfftfreq(length, 1.0 / sample_rate_hz)
    low, high = SPEECH_BAND_HZ
    rise = np.clip((freqs - (low - BAND_TAPER_HZ)) / BAND_TAPER_HZ, 0.0, 1.0)
    fall = np.clip(((high + BAND_TAPER_HZ) - freqs) / BAND_TAPER_HZ, 0.0, 1.0)
    gain = np.sin(0.5 * np.pi * rise) ** 2 * np.sin(0.5 * np.pi * fall) ** 2
    band: npt.NDArray[np.float64] = np.fft.irfft(spectrum * gain, n=length)
    return band


def speech_envelope_db(
    audio: FloatArray, sample_rate_hz: int, fps: float, frames: int | None = None
) -> FloatArray:
    """Per-frame speech-band energy of (S,) mono ``audio``: (T,) dB, floored 50 dB under the
    loudest frame.

    Frame ``t`` covers samples ``[t·rate/fps, (t+1)·rate/fps)``; ``frames`` pads with silence or
    cuts to that many frames (default: whole frames of the audio).
    """
    per = sample_rate_hz / fps
    count = int(len(audio) // per) if frames is None else frames
    edges = np.round(np.arange(count + 1) * per).astype(np.int64)
    band = speech_band(audio, sample_rate_hz) if len(audio) else np.zeros(0)
    padded = np.concatenate([band, np.zeros(max(0, int(edges[-1]) - len(audio)))])
    power = np.add.reduceat(padded[: edges[-1]] ** 2, edges[:-1]) / np.diff(edges) if count else np.zeros(0)
    level = 10 * np.log10(power + 1e-12)
    floor = level.max(initial=-120.0) - ENVELOPE_RANGE_DB
    envelope: FloatArray = np.maximum(level, floor).astype(np.float32)
    return envelope


def _pearson(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def av_sync(opening: FloatArray, envelope: FloatArray, fps: float, max_lag_ms: float = 400.0) -> AvSync:
    """Best lag and correlation between a mouth-opening track and a speech envelope.

    Args:
        opening: (T,) mouth opening per frame (any unit; larger = more open).
        envelope: (T,) speech envelope per frame, e.g. :func:`speech_envelope_db`.
        fps: frame rate of both.
        max_lag_ms: lags searched, each way.

    Raises:
        InputError: the tracks differ in length or are too short for the lag range.
    """
    if opening.shape != envelope.shape or opening.ndim != 1:
        raise InputError(f"opening {opening.shape} and envelope {envelope.shape} must be (T,) alike")
    max_lag = int(round(max_lag_ms * fps / 1000))
    if len(opening) < 4 * max_lag + 2:
        raise InputError(f"{len(opening)} frames are too few for a ±{max_lag_ms:.0f} ms lag search")
    mouth, sound = opening.astype(np.float64), envelope.astype(np.float64)
    lags = np.arange(-max_lag, max_lag + 1)
    # lag k compares the mouth at t + k with the sound at t.
    scores = np.array(
        [
            _pearson(mouth[k:], sound[: len(sound) - k]) if k >= 0 else _pearson(mouth[:k], sound[-k:])
            for k in lags
        ]
    )
    best = int(np.argmax(scores))
    shift = 0.0
    if 0 < best < len(lags) - 1:
        left, centre, right = scores[best - 1], scores[best], scores[best + 1]
        curvature = left - 2 * centre + right
        if curvature < 0:
            shift = float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
    return AvSync(
        offset_ms=float((lags[best] + shift) * 1000 / fps),
        correlation=float(scores[best]),
        correlation_at_zero=float(scores[max_lag]),
    )
