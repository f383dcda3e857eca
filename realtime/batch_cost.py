"""A running estimate of what a batch of the renderer costs, as a line in its number of rows.

On a GPU one call costs about the same for one session or many (the slope is near zero); on a CPU
each session adds its own share (the slope is what one session costs). The scheduler learns which
from the batches it runs — a least-squares line with exponential forgetting — and uses it to stop
adding sessions to a batch once one more would make a chunk in it miss its frames' slots. Until
two batch sizes have been seen it assumes rows are free (the GPU case), which lets batches grow
and so shows the slope.
"""

from __future__ import annotations

from dataclasses import dataclass

# Weight of the newest batch in the running means.
WEIGHT = 0.1
# Below this spread of batch sizes (rows squared) the slope is not identifiable.
MIN_SPREAD = 0.05


@dataclass
class BatchCost:
    """seconds ≈ ``fixed_s`` + ``per_row_s`` × rows, fitted to the batches observed."""

    batches: int = 0
    _rows: float = 0.0
    _seconds: float = 0.0
    _spread: float = 0.0  # running variance of rows
    _covariance: float = 0.0  # running covariance of rows and seconds
    _slope: float = 0.0  # the last slope the batches identified

    def observe(self, rows: int, seconds: float) -> None:
        """Add one batch of ``rows`` sessions that took ``seconds``."""
        weight = WEIGHT if self.batches else 1.0
        self.batches += 1
        row_step, second_step = rows - self._rows, seconds - self._seconds
        self._rows += weight * row_step
        self._seconds += weight * second_step
        self._spread = (1 - weight) * (self._spread + weight * row_step * row_step)
        self._covariance = (1 - weight) * (self._covariance + weight * row_step * second_step)
        if self._spread >= MIN_SPREAD:
            self._slope = max(0.0, self._covariance / self._spread)

    @property
    def per_row_s(self) -> float:
        """What one more session adds to a batch (0 until two sizes were seen). While the batches
        keep one size (one call for minutes), the spread decays and the slope is not identifiable
        from them: the last identified slope stays (forgetting it would make rows look free, and
        admission admit calls the device cannot carry)."""
        return self._slope

    @property
    def fixed_s(self) -> float:
        """What a batch costs whatever its size."""
        return max(0.0, self._seconds - self.per_row_s * self._rows)

    def predict(self, rows: int) -> float:
        """Seconds a batch of ``rows`` sessions is expected to take (0 before any was seen)."""
        return self.fixed_s + self.per_row_s * rows
