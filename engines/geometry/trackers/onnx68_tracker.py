"""Any 68-point (iBUG layout) landmark network in ONNX format, given by path.

The network sees a square crop of about 1.1x the face box, RGB in [0, 1], and returns (x, y)
pairs normalised to the crop. The face box comes from MediaPipe's short-range face detector (the
ONNX copy in ``face_mesh/models``) on the first frame or after a loss, and afterwards from the
previous frame's landmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engines.errors import InputError
from engines.geometry.trackers.base import FloatArray, ImageRGB, LandmarkLayout

LAYOUT = LandmarkLayout("ibug68", 68, has_depth=False)
CROP_SCALE = 1.1
DEFAULT_INPUT = 112
MIN_FACE_PX = 16


class Onnx68Tracker:
    """68-point landmarks from an ONNX model.

    Args:
        model_path: the ``.onnx`` file: input (B, 3, S, S) RGB in [0, 1], output (B, 136).
        threads: ONNX Runtime intra-op threads.

    Raises:
        InputError: the model is missing, unreadable, or has the wrong input or output shape.
    """

    def __init__(self, model_path: str | Path, threads: int = 1) -> None:
        from engines.geometry.trackers.face_mesh.sessions import cpu_session

        path = Path(model_path)
        if not path.is_file():
            raise InputError(f"{path}: landmark model not found")
        try:
            self._session = cpu_session(path, threads)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise InputError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise InputError(f"{path}: expected one image input (B, 3, S, S)")
        side = inputs[0].shape[2]
        self._input_size = side if isinstance(side, int) and side > 0 else DEFAULT_INPUT
        self._input_name = inputs[0].name
        if not outputs:
            raise InputError(f"{path}: the model has no output")
        # Static output shapes are often symbolic: one probe run tells the real size.
        probe = np.zeros((1, 3, self._input_size, self._input_size), dtype=np.float32)
        try:
            values = int(np.asarray(self._session.run(None, {inputs[0].name: probe})[0]).size)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InputError(f"{path}: the model does not run on a (1, 3, S, S) image ({exc})") from exc
        if values != 136:
            raise InputError(f"{path}: output has {values} values, a 68-point model gives 136")
        self._path = path
        self._detector: Any = None
        self._previous: FloatArray | None = None

    @property
    def name(self) -> str:
        return "onnx68"

    @property
    def layout(self) -> LandmarkLayout:
        return LAYOUT

    def _detect(self, frame: ImageRGB) -> tuple[float, float, float] | None:
        """Centre x, centre y and side of the most confident face box, or None."""
        if self._detector is None:
            from engines.geometry.trackers.face_mesh.detector import FaceDetector
            from engines.geometry.trackers.face_mesh.sessions import DETECTOR_MODEL

            self._detector = FaceDetector(DETECTOR_MODEL, min_score=0.5)
        detection = self._detector.detect(np.ascontiguousarray(frame))
        if detection is None:
            return None
        height, width = frame.shape[:2]
        xmin, ymin, box_width, box_height = detection.box
        side = max(box_width * width, box_height * height)
        # MediaPipe's box stops at the brows; the 68 points reach the chin: shift it down a little.
        return (xmin + box_width / 2) * width, (ymin + box_height / 2) * height + 0.1 * side, side

    def _run(self, frame: ImageRGB, cx: float, cy: float, side: float) -> FloatArray:
        size = self._input_size
        crop_side = side * CROP_SCALE
        scale = size / crop_side
        x0, y0 = cx - crop_side / 2, cy - crop_side / 2
        matrix = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], dtype=np.float64)
        crop = cv2.warpAffine(
            frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        tensor = (crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        output = self._session.run(None, {self._input_name: tensor})[0]
        xy = np.asarray(output, dtype=np.float32).reshape(-1, 2)[:68]
        points = np.zeros((68, 3), dtype=np.float32)
        points[:, 0] = x0 + xy[:, 0] * crop_side
        points[:, 1] = y0 + xy[:, 1] * crop_side
        return points

    def _plausible(self, points: FloatArray, frame: ImageRGB) -> bool:
        height, width = frame.shape[:2]
        span = np.ptp(points[:, :2], axis=0)
        inside = (points[:, 0].mean() > 0) and (points[:, 0].mean() < width)
        inside = inside and (points[:, 1].mean() > 0) and (points[:, 1].mean() < height)
        return bool(span.min() > MIN_FACE_PX and inside and np.isfinite(points).all())

    def track(self, frame: ImageRGB) -> FloatArray | None:
        """(68, 3) pixel-unit points (z = 0) in an (H, W, 3) RGB frame, or None."""
        if self._previous is not None:
            low, high = self._previous[:, :2].min(0), self._previous[:, :2].max(0)
            centre = (low + high) / 2
            points = self._run(frame, float(centre[0]), float(centre[1]), float((high - low).max()))
            if self._plausible(points, frame):
                self._previous = points
                return points
        box = self._detect(frame)
        if box is None:
            self._previous = None
            return None
        points = self._run(frame, *box)
        # One refinement pass centred on the landmarks themselves.
        low, high = points[:, :2].min(0), points[:, :2].max(0)
        points = self._run(
            frame, float((low[0] + high[0]) / 2), float((low[1] + high[1]) / 2), float((high - low).max())
        )
        if not self._plausible(points, frame):
            self._previous = None
            return None
        self._previous = points
        return points

    def reset(self) -> None:
        self._previous = None

    def close(self) -> None:
        self._previous = None
        self._detector = None
