"""Live audio of any rate, layout and sample type to 16 kHz mono float32.

Channels are averaged to mono. 16 kHz input passes through untouched (sample-exact); other rates
go through libswresample (PyAV's stateful ``AudioResampler``), which keeps its filter state across
pushes so pieces of any length join without clicks. A change of rate mid-stream flushes the old
resampler and starts a new one.
"""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt

from engines.errors import InputError
from engines.timebase import SAMPLE_RATE_HZ

FloatArray = npt.NDArray[np.float32]
MAX_CHANNELS = 8


def _as_planar_float(samples: npt.NDArray[np.generic]) -> FloatArray:
    """(S,) or (S, channels) samples of any numeric type → (channels, S) float32 in [-1, 1]."""
    array = np.asarray(samples)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or not 1 <= array.shape[1] <= MAX_CHANNELS:
        raise InputError(
            f"audio must be (samples,) or (samples, channels<= {MAX_CHANNELS}), got {array.shape}"
        )
    if np.issubdtype(array.dtype, np.integer):
        scale = float(np.iinfo(array.dtype.type).max) + 1.0
        planar = array.T.astype(np.float32) / scale
    elif np.issubdtype(array.dtype, np.floating):
        planar = array.T.astype(np.float32)
    else:
        raise InputError(f"audio samples must be numbers, got {array.dtype}")
    if not np.isfinite(planar).all():
        raise InputError("audio holds NaN or infinite samples")
    return np.ascontiguousarray(planar)


class AudioInput:
    """Converts pushed audio to 16 kHz mono float32."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._rate: int | None = None

    def convert(self, samples: npt.NDArray[np.generic], sample_rate_hz: int) -> FloatArray:
        """(S,) or (S, channels) samples at ``sample_rate_hz`` → (S',) 16 kHz mono float32.

        Raises:
            InputError: a bad rate, shape or sample type.
        """
        if not 4000 <= sample_rate_hz <= 384_000:
            raise InputError(f"sample rate {sample_rate_hz} Hz is not a usable audio rate")
        planar = _as_planar_float(samples)
        mono = planar[0] if planar.shape[0] == 1 else planar.mean(0)
        if sample_rate_hz == SAMPLE_RATE_HZ and self._resampler is None:
            return np.ascontiguousarray(mono, dtype=np.float32)
        pieces = []
        if self._rate != sample_rate_hz:
            pieces.append(self.flush())
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE_HZ)
            self._rate = sample_rate_hz
        assert self._resampler is not None
        frame = av.AudioFrame.from_ndarray(mono[None], format="fltp", layout="mono")
        frame.sample_rate = sample_rate_hz
        pieces += [out.to_ndarray().reshape(-1).astype(np.float32) for out in self._resampler.resample(frame)]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)

    def flush(self) -> FloatArray:
        """The samples still inside the resampler's filter (the end of the stream)."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        pieces = [out.to_ndarray().reshape(-1).astype(np.float32) for out in self._resampler.resample(None)]
        self._resampler, self._rate = None, None
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
