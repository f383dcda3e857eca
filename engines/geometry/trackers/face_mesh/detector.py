"""BlazeFace short-range face detector (MediaPipe's ``face_detection_short_range``) on ONNX Runtime.

The pre- and post-processing follow MediaPipe's ``FaceDetectionShortRangeCpu`` graph: the whole
frame letterboxed into 128x128 (values in [-1, 1], black borders), 896 SSD anchors, sigmoid scores
kept from 0.5, weighted non-maximum suppression at IoU 0.3, boxes mapped back to the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engines.geometry.trackers.face_mesh.rects import FloatArray, NormRect, crop_to_tensor
from engines.geometry.trackers.face_mesh.sessions import cpu_session

INPUT_SIZE = 128
STRIDES = (8, 16, 16, 16)
SUPPRESSION_IOU = 0.3
SCORE_CLIP = 100.0


@dataclass(frozen=True)
class Detection:
    """One face: normalised box (xmin, ymin, width, height), six (x, y) keypoints, score.

    Keypoints: right eye, left eye, nose tip, mouth centre, right ear tragion, left ear tragion
    (the subject's right and left).
    """

    box: tuple[float, float, float, float]
    keypoints: FloatArray
    score: float


def ssd_anchors() -> FloatArray:
    """(896, 2) anchor centres (x, y), normalised; anchors are unit-sized (fixed size)."""
    centres: list[tuple[float, float]] = []
    layer = 0
    while layer < len(STRIDES):
        stride = STRIDES[layer]
        same = layer
        per_cell = 0
        while same < len(STRIDES) and STRIDES[same] == stride:
            per_cell += 2  # aspect ratio 1.0 plus the interpolated scale
            same += 1
        cells = math.ceil(INPUT_SIZE / stride)
        for y in range(cells):
            for x in range(cells):
                centres.extend([((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell)
        layer = same
    return np.array(centres, dtype=np.float32)


def _iou(a: FloatArray, b: FloatArray) -> FloatArray:
    """IoU of one (4,) box against (K, 4) boxes, both (xmin, ymin, xmax, ymax)."""
    width = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    height = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


class FaceDetector:
    """Finds the most confident face in a frame.

    Args:
        model_path: ``face_detection_short_range.onnx``.
        min_score: detections below this confidence are dropped (MediaPipe's default 0.5).
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(self, model_path: Path, min_score: float = 0.5, threads: int = 1) -> None:
        self._session = cpu_session(model_path, threads)
        self._input = self._session.get_inputs()[0].name
        self._anchors = ssd_anchors()
        self._min_score = min_score

    def detect(self, image: npt.NDArray[np.uint8]) -> Detection | None:
        """The most confident face of an (H, W, 3) uint8 RGB frame, or None."""
        height_px, width_px = image.shape[:2]
        side = float(max(width_px, height_px))
        # The whole frame, padded to a square around its centre (letterbox).
        letterbox = NormRect(0.5, 0.5, side / width_px, side / height_px, 0.0)
        tensor = crop_to_tensor(image, letterbox, INPUT_SIZE, (-1.0, 1.0), border_zero=True)
        regressors, classificators = self._session.run(None, {self._input: tensor})
        raw = np.asarray(regressors, dtype=np.float32)[0]  # (896, 16)
        logits = np.clip(np.asarray(classificators, dtype=np.float32)[0, :, 0], -SCORE_CLIP, SCORE_CLIP)
        scores = (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
        keep = np.flatnonzero(scores >= self._min_score)
        if keep.size == 0:
            return None
        raw, scores, anchors = raw[keep] / INPUT_SIZE, scores[keep], self._anchors[keep]
        centre = raw[:, 0:2] + anchors
        half = raw[:, 2:4] / 2
        corners = np.concatenate([centre - half, centre + half], axis=1)  # (K, 4) in the letterbox
        points = raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
        order = np.argsort(-scores, kind="stable")
        top = order[0]
        overlapping = order[_iou(corners[top], corners[order]) > SUPPRESSION_IOU]
        weights = scores[overlapping][:, None]
        box = (corners[overlapping] * weights).sum(axis=0) / weights.sum()
        keypoints = (points[overlapping] * weights[:, :, None]).sum(axis=0) / weights.sum()
        # Letterbox coordinates back to the frame's.
        scale = np.array([side / width_px, side / height_px], dtype=np.float32)
        low = (box[:2] - 0.5) * scale + 0.5
        high = (box[2:] - 0.5) * scale + 0.5
        keypoints = ((keypoints - 0.5) * scale + 0.5).astype(np.float32)
        return Detection(
            box=(float(low[0]), float(low[1]), float(high[0] - low[0]), float(high[1] - low[1])),
            keypoints=keypoints,
            score=float(scores[top]),
        )
