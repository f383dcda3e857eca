"""MFCC audio features as SyncNet's reference evaluation computes them.

The public SyncNet (``joonson/syncnet_python``) feeds its audio branch with
``python_speech_features.mfcc(audio, 16000)`` on int16 samples, all other arguments left at their
defaults. This module reproduces that computation with numpy and scipy only:

* pre-emphasis ``y[0] = x[0]``, ``y[n] = x[n] - 0.97 x[n-1]``;
* frames of 400 samples (25 ms) every 160 samples (10 ms), no window, the last frame zero-padded;
* power spectrum ``|rfft(frame, 512)|^2 / 512``;
* 26 triangular mel filters from 0 Hz to 8 kHz on FFT bins ``floor(513 * hz / 16000)``;
* log of the filter energies, orthonormal DCT-II, the first 13 coefficients, sine lifter 22;
* coefficient 0 replaced by the log of the frame's total power.
"""

from __future__ import annotations

import decimal
import functools
import math

import numpy as np
import numpy.typing as npt
from scipy.fft import dct

from engines.timebase import SAMPLE_RATE_HZ

FloatArray = npt.NDArray[np.float64]

WINDOW_S = 0.025
STEP_S = 0.01
NUM_CEPSTRA = 13
NUM_FILTERS = 26
NFFT = 512
PREEMPHASIS = 0.97
CEP_LIFTER = 22
# Where a filter or frame energy is exactly 0, python_speech_features substitutes float64's epsilon.
_EPS = float(np.finfo(np.float64).eps)


def _round_half_up(value: float) -> int:
    """``value`` rounded to the nearest integer, halves away from zero (for positive values: up)."""
    return int(decimal.Decimal(value).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


def hz_to_mel(hz: FloatArray | float) -> FloatArray:
    """Mel scale of ``hz`` (HTK formula ``2595 log10(1 + hz / 700)``), element-wise."""
    return np.asarray(2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0), np.float64)


def mel_to_hz(mel: FloatArray | float) -> FloatArray:
    """Inverse of :func:`hz_to_mel`, element-wise."""
    return np.asarray(700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0), np.float64)


@functools.lru_cache(maxsize=8)
def mel_filterbank(
    num_filters: int = NUM_FILTERS,
    nfft: int = NFFT,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    low_hz: float = 0.0,
    high_hz: float | None = None,
) -> FloatArray:
    """(num_filters, nfft // 2 + 1) triangular mel filters, one per row, as python_speech_features.

    Each filter rises linearly from 0 at bin ``b[j]`` to 1 at ``b[j+1]`` and falls back to 0 at
    ``b[j+2]``, where ``b = floor((nfft + 1) * mel_to_hz(linspace(mel(low), mel(high), n + 2)) / sr)``.
    The returned array is shared (cached): do not modify it.
    """
    high = high_hz if high_hz else sample_rate_hz / 2
    if high > sample_rate_hz / 2:
        raise ValueError(f"high_hz {high} is above the Nyquist frequency {sample_rate_hz / 2}")
    mel_points = np.linspace(float(hz_to_mel(low_hz)), float(hz_to_mel(high)), num_filters + 2)
    bins = np.floor((nfft + 1) * mel_to_hz(mel_points) / sample_rate_hz)
    bank = np.zeros((num_filters, nfft // 2 + 1), np.float64)
    for j in range(num_filters):
        left, centre, right = bins[j], bins[j + 1], bins[j + 2]
        for i in range(int(left), int(centre)):
            bank[j, i] = (i - left) / (centre - left)
        for i in range(int(centre), int(right)):
            bank[j, i] = (right - i) / (right - centre)
    bank.setflags(write=False)
    return bank


def frame_signal(signal: FloatArray, frame_len: int, frame_step: int) -> FloatArray:
    """(N, frame_len) overlapping frames of the (S,) ``signal``, the tail zero-padded.

    ``N = 1`` when ``S <= frame_len``, else ``1 + ceil((S - frame_len) / frame_step)``.
    """
    length = len(signal)
    count = 1 if length <= frame_len else 1 + math.ceil((length - frame_len) / frame_step)
    padded_len = (count - 1) * frame_step + frame_len
    padded = np.concatenate([np.asarray(signal, np.float64), np.zeros(padded_len - length, np.float64)])
    starts = np.arange(count) * frame_step
    return np.asarray(padded[starts[:, None] + np.arange(frame_len)[None, :]], dtype=np.float64)


def mfcc(
    signal: npt.ArrayLike,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    window_s: float = WINDOW_S,
    step_s: float = STEP_S,
    num_cepstra: int = NUM_CEPSTRA,
    num_filters: int = NUM_FILTERS,
    nfft: int = NFFT,
    low_hz: float = 0.0,
    high_hz: float | None = None,
    preemphasis: float = PREEMPHASIS,
    cep_lifter: int = CEP_LIFTER,
    append_energy: bool = True,
) -> FloatArray:
    """(N, num_cepstra) MFCCs of the (S,) mono ``signal``, as ``python_speech_features.mfcc``.

    The defaults are those of ``python_speech_features.mfcc`` 0.6 (which SyncNet uses). ``signal`` is
    taken at its own scale: SyncNet feeds int16 sample values (float audio in [-1, 1] times 32768).
    With 16 kHz audio, ``N = 1 + ceil((S - 400) / 160)`` for ``S > 400``: 100 frames a second.

    Raises:
        ValueError: ``signal`` is not one-dimensional or is empty.
    """
    samples = np.asarray(signal, np.float64)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"mfcc needs a non-empty 1-D signal, got shape {samples.shape}")
    emphasised = np.append(samples[0], samples[1:] - preemphasis * samples[:-1])
    frames = frame_signal(
        emphasised, _round_half_up(window_s * sample_rate_hz), _round_half_up(step_s * sample_rate_hz)
    )
    if frames.shape[1] > nfft:
        raise ValueError(f"frame length {frames.shape[1]} is longer than the FFT size {nfft}")
    power = np.square(np.abs(np.fft.rfft(frames, nfft))) / nfft
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, _EPS, energy)
    bank = mel_filterbank(num_filters, nfft, sample_rate_hz, low_hz, high_hz)
    filtered = power @ bank.T
    filtered = np.where(filtered == 0, _EPS, filtered)
    cepstra = dct(np.log(filtered), type=2, axis=1, norm="ortho")[:, :num_cepstra]
    if cep_lifter > 0:
        n = np.arange(cepstra.shape[1])
        cepstra = cepstra * (1.0 + (cep_lifter / 2.0) * np.sin(np.pi * n / cep_lifter))
    if append_energy:
        cepstra[:, 0] = np.log(energy)
    return np.asarray(cepstra, np.float64)
