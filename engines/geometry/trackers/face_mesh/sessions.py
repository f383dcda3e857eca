"""ONNX Runtime sessions for the shipped face models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).resolve().parent / "models"
DETECTOR_MODEL = MODELS_DIR / "face_detection_short_range.onnx"
LANDMARK_MODEL = MODELS_DIR / "face_landmark_with_attention.onnx"


def cpu_session(path: Path, threads: int = 1) -> Any:
    """A quiet CPU inference session (``threads`` intra-op threads) for a landmark or face model.

    Raises:
        FileNotFoundError: the model file is missing (a broken install).
    """
    import onnxruntime as ort

    if not path.is_file():
        raise FileNotFoundError(f"{path}: face model missing from the install")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
