"""The landmark tracker protocol shared by every face tracker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
ImageRGB = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class LandmarkLayout:
    """What the points of a tracker mean.

    Attributes:
        name: layout id, e.g. ``"mediapipe478"`` or ``"ibug68"``.
        num_points: N, the number of points per face.
        has_depth: whether the third coordinate is a real depth estimate (else it is 0).
    """

    name: str
    num_points: int
    has_depth: bool


@runtime_checkable
class LandmarkTracker(Protocol):
    """Finds one face per frame and returns its landmarks.

    Trackers are stateful (they may use the previous frame to find the face faster), so frames of
    one video must be fed in order and :meth:`reset` called between videos.
    """

    @property
    def name(self) -> str:
        """Short id used in manifests and reports, e.g. ``"mediapipe"``."""
        ...

    @property
    def layout(self) -> LandmarkLayout:
        """The meaning of the returned points."""
        ...

    def track(self, frame: ImageRGB) -> FloatArray | None:
        """Landmarks of the most prominent face.

        Args:
            frame: (H, W, 3) uint8 RGB image.

        Returns:
            (N, 3) float32 points in pixel units of ``frame`` (x right, y down, z the depth
            in the same units as x with smaller values nearer the camera, 0 for 2D trackers),
            or ``None`` when no face is found.
        """
        ...

    def reset(self) -> None:
        """Forget any state carried from previous frames."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...
