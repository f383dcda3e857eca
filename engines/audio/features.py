"""Log-mel features: 80 bands, 25 ms window, 10 ms hop; 4 feature frames per 25 fps video frame.

Framing: feature frame ``j`` analyses the window centred at sample ``(j + 0.5) * hop``, i.e.
samples ``[j*hop + hop/2 - win/2, j*hop + hop/2 + win/2)`` = ``[160 j - 120, 160 j + 280)`` at
16 kHz, zeros outside the signal. Video frame ``t`` (samples ``[640 t, 640 t + 640)`` at 25 fps)
therefore owns exactly the feature frames ``4t .. 4t+3``, whose centres lie symmetrically inside
it, and a streaming extractor can emit frame ``j`` as soon as it has 120 samples past the end of
that frame's hop block.

Spectrum: Hann window, zero-padded to ``n_fft`` = 512, power spectrum; mel scale: HTK
(``2595 log10(1 + f/700)``), triangular filters with unit peak between 55 Hz and 7600 Hz;
features are ``ln(mel power + 1e-6)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

from engines.errors import InputError
from engines.timebase import FPS, SAMPLE_RATE_HZ

FloatArray = npt.NDArray[np.float32]
LOG_FLOOR = 1e-6
STD_FLOOR = 1e-3


@dataclass(frozen=True)
class LogMelConfig:
    """Parameters of the log-mel analysis."""

    sample_rate_hz: int = SAMPLE_RATE_HZ
    n_mels: int = 80
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    fmin_hz: float = 55.0
    fmax_hz: float = 7600.0

    @property
    def win_samples(self) -> int:
        return int(round(self.win_ms * self.sample_rate_hz / 1000.0))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_ms * self.sample_rate_hz / 1000.0))

    @property
    def lead_samples(self) -> int:
        """Samples a window reaches before the start of its hop block (120 at the defaults)."""
        return (self.win_samples - self.hop_samples) // 2

    @property
    def lead_ms(self) -> float:
        """How far a window reaches past either end of its hop block, (win - hop) / 2 (7.5 ms at the
        defaults): the last window of a video frame needs this much audio after the frame's end."""
        return 1000.0 * self.lead_samples / self.sample_rate_hz

    def frames_per_video_frame(self, fps: float) -> int:
        """Feature frames per video frame (4 at 25 fps).

        Raises:
            ValueError: the hop does not divide the video frame duration.
        """
        ratio = self.sample_rate_hz / fps / self.hop_samples
        if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
            raise ValueError(f"{fps} fps is not a whole number of {self.hop_ms} ms hops")
        return int(round(ratio))


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    mel: npt.NDArray[np.float64] = 2595.0 * np.log10(1.0 + hz / 700.0)
    return mel


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@cache
def _filterbank(cfg: LogMelConfig) -> FloatArray:
    bins = np.fft.rfftfreq(cfg.n_fft, 1.0 / cfg.sample_rate_hz)
    edges = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array(cfg.fmin_hz)), _hz_to_mel(np.array(cfg.fmax_hz)), cfg.n_mels + 2)
    )
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    bank = np.clip(np.minimum(rising, falling), 0.0, None).astype(np.float32)
    bank.setflags(write=False)
    return bank


def mel_filterbank(cfg: LogMelConfig = LogMelConfig()) -> FloatArray:
    """(n_mels, n_fft // 2 + 1) triangular HTK mel filters with unit peaks."""
    return _filterbank(cfg).copy()


@cache
def _window(cfg: LogMelConfig) -> FloatArray:
    window = np.zeros(cfg.n_fft, dtype=np.float32)
    window[: cfg.win_samples] = np.hanning(cfg.win_samples + 2)[1:-1]
    window.setflags(write=False)
    return window


def _as_audio(audio: npt.ArrayLike) -> FloatArray:
    try:
        samples = np.asarray(audio, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"audio must be numeric samples ({exc})") from exc
    if samples.ndim != 1:
        raise InputError(f"audio must be mono, shape (S,), got {samples.shape}")
    if not np.isfinite(samples).all():
        raise InputError("audio holds NaN or infinite samples")
    return samples


def _frames_from_padded(padded: FloatArray, count: int, cfg: LogMelConfig) -> FloatArray:
    """Log-mel of ``count`` windows; window ``j`` starts at ``padded[j * hop]``."""
    if count <= 0:
        return np.zeros((0, cfg.n_mels), dtype=np.float32)
    hop, win = cfg.hop_samples, cfg.win_samples
    view = np.lib.stride_tricks.sliding_window_view(padded[: (count - 1) * hop + win], win)[::hop]
    windowed = np.zeros((count, cfg.n_fft), dtype=np.float32)
    windowed[:, :win] = view * _window(cfg)[:win]
    power = np.abs(np.fft.rfft(windowed, axis=1)) ** 2
    mel = power.astype(np.float32) @ _filterbank(cfg).T
    features: FloatArray = np.log(mel + LOG_FLOOR).astype(np.float32)
    return features


def log_mel(audio: npt.ArrayLike, cfg: LogMelConfig = LogMelConfig()) -> FloatArray:
    """Log-mel features of a whole signal.

    Args:
        audio: (S,) mono samples at ``cfg.sample_rate_hz``.
        cfg: analysis parameters.

    Returns:
        (ceil(S / hop), n_mels) float32.

    Raises:
        InputError: not mono, or not finite.
    """
    samples = _as_audio(audio)
    count = -(-len(samples) // cfg.hop_samples)
    lead = cfg.lead_samples
    tail = cfg.win_samples - lead
    padded = np.concatenate(
        [
            np.zeros(lead, np.float32),
            samples,
            np.zeros(count * cfg.hop_samples - len(samples) + tail, np.float32),
        ]
    )
    return _frames_from_padded(padded, count, cfg)


def log_mel_for_video(
    audio: npt.ArrayLike, num_frames: int, fps: float = FPS, cfg: LogMelConfig = LogMelConfig()
) -> FloatArray:
    """Features aligned to video frames: rows ``4t .. 4t+3`` belong to frame ``t`` at 25 fps.

    Args:
        audio: (S,) mono samples; padded with silence or cut to ``num_frames / fps`` seconds.
        num_frames: T, number of video frames.
        fps: video frame rate.
        cfg: analysis parameters.

    Returns:
        (T * frames_per_video_frame, n_mels) float32.
    """
    samples = _as_audio(audio)
    per = cfg.frames_per_video_frame(fps)
    wanted = num_frames * per * cfg.hop_samples
    if len(samples) < wanted:
        samples = np.concatenate([samples, np.zeros(wanted - len(samples), np.float32)])
    # Keep the samples just past the end: the last windows reach into them.
    features = log_mel(samples[: wanted + cfg.win_samples], cfg)
    return features[: num_frames * per]


@dataclass(frozen=True)
class FeatureStats:
    """Per-band mean and standard deviation, each (n_mels,)."""

    mean: FloatArray
    std: FloatArray

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(x) for x in self.mean], "std": [float(x) for x in self.std]}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> FeatureStats:
        return cls(np.asarray(data["mean"], np.float32), np.asarray(data["std"], np.float32))


def utterance_stats(features: FloatArray) -> FeatureStats:
    """Mean and std (floored at 1e-3) over time of (F, n_mels) features."""
    if features.ndim != 2 or len(features) == 0:
        raise InputError(f"features must be (F, n_mels) with F > 0, got {features.shape}")
    return FeatureStats(
        features.mean(0).astype(np.float32), np.maximum(features.std(0), STD_FLOOR).astype(np.float32)
    )


def normalise(features: FloatArray, stats: FeatureStats) -> FloatArray:
    """(F, n_mels) features standardised per band with ``stats``."""
    return ((features - stats.mean) / stats.std).astype(np.float32)


class StreamingLogMel:
    """Incremental :func:`log_mel`: push samples of any length, get the frames completed so far.

    The frames equal those of :func:`log_mel` on the concatenated signal; the state is only the
    samples that windows still need.
    """

    def __init__(self, cfg: LogMelConfig = LogMelConfig()) -> None:
        self.cfg = cfg
        self._buffer = np.zeros(cfg.lead_samples, dtype=np.float32)
        self._emitted = 0
        self._seen = 0

    def push(self, audio: npt.ArrayLike) -> FloatArray:
        """Add samples; returns the (k, n_mels) frames whose windows are now complete."""
        samples = _as_audio(audio)
        self._seen += len(samples)
        self._buffer = np.concatenate([self._buffer, samples])
        hop, win = self.cfg.hop_samples, self.cfg.win_samples
        count = (len(self._buffer) - win) // hop + 1 if len(self._buffer) >= win else 0
        return self._take(count)

    def flush(self) -> FloatArray:
        """The remaining frames as if the signal ended here (zero padded)."""
        total = -(-self._seen // self.cfg.hop_samples)
        count = total - self._emitted
        if count <= 0:
            return np.zeros((0, self.cfg.n_mels), dtype=np.float32)
        needed = (count - 1) * self.cfg.hop_samples + self.cfg.win_samples
        if len(self._buffer) < needed:
            self._buffer = np.concatenate([self._buffer, np.zeros(needed - len(self._buffer), np.float32)])
        return self._take(count)

    def _take(self, count: int) -> FloatArray:
        frames = _frames_from_padded(self._buffer, count, self.cfg)
        self._buffer = self._buffer[count * self.cfg.hop_samples :]
        self._emitted += count
        return frames
