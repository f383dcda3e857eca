"""MediaPipe Face Mesh (478 3D points: 468 mesh + 10 iris) on ONNX Runtime.

The models are MediaPipe 0.10.21's own face detector and attention landmark model, converted once
to ONNX (``face_mesh/models``, see its README) and run here with the detection -> landmarks ->
tracking-rectangle loop of MediaPipe's ``FaceLandmarkFrontCpu`` graph: the detector runs only
when there is no face from the previous frame, each frame's landmarks give the next frame's
rectangle, and a face whose presence probability falls below 0.5 is dropped (the next frame
detects again). No ``mediapipe`` package is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from engines.errors import InputError
from engines.geometry.trackers.base import FloatArray, ImageRGB, LandmarkLayout
from engines.geometry.trackers.face_mesh.rects import NormRect, rect_from_box, rect_from_landmarks

if TYPE_CHECKING:
    from engines.geometry.trackers.face_mesh.detector import FaceDetector
    from engines.geometry.trackers.face_mesh.landmarker import FaceLandmarker

LAYOUT = LandmarkLayout("mediapipe478", 478, has_depth=True)
# The outer eye corners: the line between them sets the tracking rectangle's rotation.
ROTATION_FROM, ROTATION_TO = 33, 263


class MediaPipeTracker:
    """Face Mesh with refined lips and irises, tracking from frame to frame.

    Args:
        min_detection_confidence: face detector threshold.
        min_tracking_confidence: below this face-presence probability the next frame runs the
            detector again.
        threads: ONNX Runtime intra-op threads per model.
    """

    def __init__(
        self, min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5, threads: int = 1
    ) -> None:
        self._detection = min_detection_confidence
        self._tracking = min_tracking_confidence
        self._threads = threads
        self._detector: FaceDetector | None = None
        self._landmarker: FaceLandmarker | None = None
        self._rect: NormRect | None = None

    @property
    def name(self) -> str:
        return "mediapipe"

    @property
    def layout(self) -> LandmarkLayout:
        return LAYOUT

    def _models(self) -> tuple[FaceDetector, FaceLandmarker]:
        if self._detector is None or self._landmarker is None:
            from engines.geometry.trackers.face_mesh.detector import FaceDetector
            from engines.geometry.trackers.face_mesh.landmarker import FaceLandmarker
            from engines.geometry.trackers.face_mesh.sessions import DETECTOR_MODEL, LANDMARK_MODEL

            try:
                self._detector = FaceDetector(DETECTOR_MODEL, self._detection, self._threads)
                self._landmarker = FaceLandmarker(LANDMARK_MODEL, self._threads)
            except FileNotFoundError as error:
                raise InputError(f"{error}: reinstall the project (./install.sh)") from None
        return self._detector, self._landmarker

    def track_normalized(self, frame: ImageRGB) -> FloatArray | None:
        """(478, 3) points normalised as MediaPipe reports them (x, y by the frame, z by its width)."""
        detector, landmarker = self._models()
        height, width = frame.shape[:2]
        frame = np.ascontiguousarray(frame)
        if self._rect is None:
            detection = detector.detect(frame)
            if detection is None:
                return None
            keypoints = detection.keypoints
            self._rect = rect_from_box(
                detection.box, tuple(keypoints[0]), tuple(keypoints[1]), (width, height)
            )
        points, presence = landmarker.landmarks(frame, self._rect)
        if presence < self._tracking:
            self._rect = None
            return None
        self._rect = rect_from_landmarks(points, ROTATION_FROM, ROTATION_TO, (width, height))
        return points

    def track(self, frame: ImageRGB) -> FloatArray | None:
        """(478, 3) pixel-unit points of the face in an (H, W, 3) RGB frame, or None."""
        points = self.track_normalized(frame)
        if points is None:
            return None
        height, width = frame.shape[:2]
        return points * np.array([width, height, width], dtype=np.float32)

    def reset(self) -> None:
        self._rect = None

    def close(self) -> None:
        self._detector = None
        self._landmarker = None
        self._rect = None
