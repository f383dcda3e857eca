"""The ``face-alignment`` package (Bulat & Tzimiropoulos): 68 points, weights downloaded on first use."""

from __future__ import annotations

from typing import Any

import numpy as np

from engines.errors import MissingDependencyError, StableFaceError
from engines.geometry.trackers.base import FloatArray, ImageRGB, LandmarkLayout

LAYOUT = LandmarkLayout("ibug68", 68, has_depth=False)


class FaceAlignmentTracker:
    """2D 68-point landmarks from ``face_alignment.FaceAlignment`` on CPU or CUDA.

    Raises:
        MissingDependencyError: face-alignment is not installed.
        StableFaceError: its weights could not be downloaded.
    """

    def __init__(self, device: str = "cpu") -> None:
        try:
            import face_alignment
        except ImportError as exc:
            raise MissingDependencyError(
                "the face-alignment tracker needs the face-alignment package: pip install -e .[eval]"
            ) from exc
        try:
            self._model: Any = face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, device=device)
        except (OSError, RuntimeError, ValueError) as exc:
            raise StableFaceError(
                f"face-alignment could not load its weights (it downloads them on first use): {exc}"
            ) from exc

    @property
    def name(self) -> str:
        return "face-alignment"

    @property
    def layout(self) -> LandmarkLayout:
        return LAYOUT

    def track(self, frame: ImageRGB) -> FloatArray | None:
        """(68, 3) pixel-unit points (z = 0) of the largest face in an (H, W, 3) RGB frame, or None."""
        faces = self._model.get_landmarks_from_image(np.ascontiguousarray(frame))
        if not faces:
            return None
        largest = max(faces, key=lambda f: float(np.ptp(f[:, 0]) * np.ptp(f[:, 1])))
        points = np.zeros((68, 3), dtype=np.float32)
        points[:, :2] = np.asarray(largest, dtype=np.float32)[:, :2]
        return points

    def reset(self) -> None:
        """Stateless: every frame is detected anew."""

    def close(self) -> None:
        self._model = None
