"""MediaPipe Face Mesh: 478 3D points (468 mesh + 10 iris), models shipped in the mediapipe wheel."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from engines.geometry.trackers.base import FloatArray, ImageRGB, LandmarkLayout
from engines.process_hold import CountedHold

LAYOUT = LandmarkLayout("mediapipe478", 478, has_depth=True)


def _stderr_to_devnull() -> int | None:
    """Point file descriptor 2 at /dev/null; returns a duplicate of the real one (None: no stderr)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to protect
        return None
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    return saved


def _stderr_back(saved: int | None) -> None:
    if saved is not None:
        os.dup2(saved, 2)
        os.close(saved)


# Counted, so that trackers starting on several threads at once restore the real stderr, not each
# other's /dev/null.
_SILENCED_STDERR = CountedHold(_stderr_to_devnull, _stderr_back)


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send the process's stderr (file descriptor 2) to /dev/null inside the block only.

    MediaPipe's graphs print absl warnings and TF Lite info lines straight to file descriptor 2
    while they start and on their first frame; neither GLOG_minloglevel nor TF_CPP_MIN_LOG_LEVEL
    stops them. They mean nothing to a user and break progress bars. Python's own stderr output
    written inside the block is lost too, so keep the block to the graph's start.
    """
    _SILENCED_STDERR.acquire()
    try:
        yield
    finally:
        _SILENCED_STDERR.release()


class MediaPipeTracker:
    """Face Mesh with refined lips and irises, tracking from frame to frame.

    Args:
        min_detection_confidence: face detector threshold.
        min_tracking_confidence: below this the next frame runs the detector again.
    """

    def __init__(self, min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5) -> None:
        self._detection = min_detection_confidence
        self._tracking = min_tracking_confidence
        self._mesh: Any = None
        self._warm = False

    @property
    def name(self) -> str:
        return "mediapipe"

    @property
    def layout(self) -> LandmarkLayout:
        return LAYOUT

    def _graph(self) -> Any:
        if self._mesh is None:
            from mediapipe.python.solutions.face_mesh import FaceMesh

            self._mesh = FaceMesh(
                static_image_mode=False,
                max_num_faces=1,
                refine_landmarks=True,
                min_detection_confidence=self._detection,
                min_tracking_confidence=self._tracking,
            )
        return self._mesh

    def track(self, frame: ImageRGB) -> FloatArray | None:
        """(478, 3) pixel-unit points of the face in an (H, W, 3) RGB frame, or None."""
        height, width = frame.shape[:2]
        if self._warm:
            result = self._graph().process(np.ascontiguousarray(frame))
        else:
            with native_stderr_silenced():
                result = self._graph().process(np.ascontiguousarray(frame))
            self._warm = True
        faces = result.multi_face_landmarks
        if not faces:
            return None
        points = np.array([(p.x, p.y, p.z) for p in faces[0].landmark], dtype=np.float32)
        points *= np.array([width, height, width], dtype=np.float32)
        return points

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None
        self._warm = False
