"""Validation metrics that need a face tracker: how far the rendered lips are from the true ones."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from engines.geometry.layouts import MEDIAPIPE478
from engines.geometry.trackers.mediapipe_tracker import MediaPipeTracker

ImageRGB = npt.NDArray[np.uint8]


def mouth_landmark_distance(rendered: Sequence[ImageRGB], truth: Sequence[ImageRGB]) -> tuple[float, float]:
    """Mean distance between MediaPipe's lip points on rendered and true frames, over the image side.

    This is the paper's NLMD (normalised landmark distance) on the lips, with MediaPipe's 40 lip
    points instead of the 68-point layout's 20.

    Args:
        rendered: (S, S, 3) uint8 RGB frames.
        truth: the matching true frames.

    Returns:
        (distance, share of frame pairs where both faces were found); distance is NaN when none.
    """
    lips = list(MEDIAPIPE478.lips)
    tracker_rendered, tracker_truth = MediaPipeTracker(), MediaPipeTracker()
    distances = []
    try:
        for fake, real in zip(rendered, truth, strict=True):
            a, b = tracker_rendered.track(fake), tracker_truth.track(real)
            if a is not None and b is not None:
                distances.append(
                    float(np.linalg.norm(a[lips, :2] - b[lips, :2], axis=1).mean()) / real.shape[0]
                )
    finally:
        tracker_rendered.close()
        tracker_truth.close()
    found = len(distances) / max(1, len(rendered))
    return (float(np.mean(distances)) if distances else float("nan")), found
