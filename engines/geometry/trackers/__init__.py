"""Landmark trackers (MediaPipe Face Mesh, face-alignment, any 68-point ONNX model)."""

from __future__ import annotations

from pathlib import Path

from engines.errors import InputError
from engines.geometry.trackers.base import LandmarkLayout, LandmarkTracker

TRACKER_NAMES = ("mediapipe", "face-alignment", "onnx68")

__all__ = ["TRACKER_NAMES", "LandmarkLayout", "LandmarkTracker", "create_tracker"]


def create_tracker(name: str, model_path: str | Path | None = None) -> LandmarkTracker:
    """Build a tracker by name.

    Args:
        name: one of :data:`TRACKER_NAMES`.
        model_path: the ONNX file, required by ``onnx68`` and ignored by the others.

    Raises:
        InputError: unknown name, or ``onnx68`` without a model path.
    """
    if name == "mediapipe":
        from engines.geometry.trackers.mediapipe_tracker import MediaPipeTracker

        return MediaPipeTracker()
    if name == "onnx68":
        if model_path is None:
            raise InputError("the onnx68 tracker needs a 68-point ONNX model: pass --tracker-model PATH")
        from engines.geometry.trackers.onnx68_tracker import Onnx68Tracker

        return Onnx68Tracker(model_path)
    if name == "face-alignment":
        from engines.geometry.trackers.face_alignment_tracker import FaceAlignmentTracker

        return FaceAlignmentTracker()
    raise InputError(f"unknown tracker {name!r}; choose one of {', '.join(TRACKER_NAMES)}")
