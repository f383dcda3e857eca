"""Streaming audio features per video frame: log-mel rows with running normalisation, and loudness.

Frame ``t`` owns the log-mel rows ``4t .. 4t+3`` (``engines.audio.features``) and the samples
``[640 t, 640 t + 640)``. Rows are standardised with running per-band statistics that start at
the avatar's training statistics and follow the live voice (an exponential average over voiced
frames only, so pauses do not drag the statistics towards silence). Everything is a
deterministic function of the sample sequence, whatever the sizes of the pushes.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from engines.audio.features import LOG_FLOOR, FeatureStats, LogMelConfig, StreamingLogMel
from engines.timebase import FPS, SAMPLES_PER_FRAME

FloatArray = npt.NDArray[np.float32]
ROWS_PER_FRAME = LogMelConfig().frames_per_video_frame(FPS)
SILENT_DBFS = -120.0


class FrameHistory:
    """Per-frame values addressed by absolute frame index; the owner forgets what it no longer needs."""

    def __init__(self) -> None:
        self.start = 0
        self._values: list[FloatArray] = []

    @property
    def end(self) -> int:
        """One past the newest frame."""
        return self.start + len(self._values)

    def append(self, value: FloatArray) -> None:
        self._values.append(value)

    def forget_before(self, frame: int) -> None:
        """Drop the frames before ``frame``."""
        drop = min(max(0, frame - self.start), len(self._values))
        if drop:
            del self._values[:drop]
            self.start += drop

    def __getitem__(self, frame: int) -> FloatArray:
        if not self.start <= frame < self.end:
            raise IndexError(f"frame {frame} outside the kept history {self.start}..{self.end - 1}")
        return self._values[frame - self.start]


class FrameFeatures:
    """Push 16 kHz mono samples; read normalised (320,) rows and loudness per completed frame."""

    def __init__(self, stats: FeatureStats, normalisation_time_s: float, silence_dbfs: float) -> None:
        self._logmel = StreamingLogMel()
        self._mean = stats.mean.astype(np.float64)
        self._var = (stats.std.astype(np.float64)) ** 2
        self._alpha = 1.0 - math.exp(-1.0 / (FPS * normalisation_time_s))
        self._silence_dbfs = silence_dbfs
        self._rows = np.zeros((0, stats.mean.shape[0]), np.float32)
        self._samples = np.zeros(0, np.float32)
        self._loudness: list[float] = []
        self.rows = FrameHistory()
        self.loudness = FrameHistory()
        self.silence_row = np.tile((math.log(LOG_FLOOR) - stats.mean) / stats.std, ROWS_PER_FRAME).astype(
            np.float32
        )

    @property
    def frames(self) -> int:
        """Frames whose rows and loudness are complete."""
        return self.rows.end

    def push(self, samples: FloatArray) -> None:
        self._rows = np.concatenate([self._rows, self._logmel.push(samples)])
        self._samples = np.concatenate([self._samples, samples])
        whole = len(self._samples) // SAMPLES_PER_FRAME
        if whole:
            blocks = self._samples[: whole * SAMPLES_PER_FRAME].reshape(whole, SAMPLES_PER_FRAME)
            rms = np.sqrt(np.mean(blocks.astype(np.float64) ** 2, axis=1))
            self._loudness += [20 * math.log10(r) if r > 1e-6 else SILENT_DBFS for r in rms]
            self._samples = self._samples[whole * SAMPLES_PER_FRAME :]
        ready = min(len(self._rows) // ROWS_PER_FRAME, len(self._loudness))
        for index in range(ready):
            self._emit(
                self._rows[index * ROWS_PER_FRAME : (index + 1) * ROWS_PER_FRAME], self._loudness[index]
            )
        self._rows = self._rows[ready * ROWS_PER_FRAME :]
        del self._loudness[:ready]

    def forget_before(self, frame: int) -> None:
        """Drop the rows and loudness of frames before ``frame``."""
        self.rows.forget_before(frame)
        self.loudness.forget_before(frame)

    def _emit(self, rows: FloatArray, loudness: float) -> None:
        std = np.sqrt(np.maximum(self._var, 1e-6))
        self.rows.append(((rows - self._mean) / std).astype(np.float32).reshape(-1))
        self.loudness.append(np.array([loudness], np.float32))
        if loudness > self._silence_dbfs:
            frame_mean = rows.mean(0)
            self._mean += self._alpha * (frame_mean - self._mean)
            self._var += self._alpha * (((rows - self._mean) ** 2).mean(0) - self._var)
