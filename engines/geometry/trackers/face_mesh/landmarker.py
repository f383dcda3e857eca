"""MediaPipe's face landmark model with attention (478 points) on ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from engines.geometry.trackers.face_mesh.rects import FloatArray, NormRect, crop_to_tensor, project_points
from engines.geometry.trackers.face_mesh.refinement import refine
from engines.geometry.trackers.face_mesh.sessions import cpu_session

INPUT_SIZE = 192
# MediaPipe's face-mesh graph drops the landmarks below this face-presence probability.
MIN_PRESENCE = 0.5


class FaceLandmarker:
    """Landmarks of the face inside a rectangle.

    Args:
        model_path: ``face_landmark_with_attention.onnx``.
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        self._session = cpu_session(model_path, threads)
        self._input = self._session.get_inputs()[0].name
        self._outputs = [
            "output_mesh_identity",
            "output_lips",
            "output_left_eye",
            "output_right_eye",
            "output_left_iris",
            "output_right_iris",
            "conv_faceflag",
        ]

    def landmarks(self, image: npt.NDArray[np.uint8], rect: NormRect) -> tuple[FloatArray, float]:
        """The face's points in an (H, W, 3) uint8 RGB frame and the face-presence probability.

        Returns:
            ((478, 3) float32 points: x, y normalised to the frame, z in frame widths;
            presence in [0, 1]).
        """
        tensor = crop_to_tensor(image, rect, INPUT_SIZE, (0.0, 1.0), border_zero=False)
        mesh, lips, left_eye, right_eye, left_iris, right_iris, flag = self._session.run(
            self._outputs, {self._input: tensor}
        )
        presence = float(1.0 / (1.0 + np.exp(-float(np.asarray(flag).ravel()[0]))))
        local = refine(
            np.asarray(mesh, dtype=np.float32).reshape(468, 3),
            np.asarray(lips, dtype=np.float32).reshape(80, 2),
            np.asarray(left_eye, dtype=np.float32).reshape(71, 2),
            np.asarray(right_eye, dtype=np.float32).reshape(71, 2),
            np.asarray(left_iris, dtype=np.float32).reshape(5, 2),
            np.asarray(right_iris, dtype=np.float32).reshape(5, 2),
        )
        local /= np.float32(INPUT_SIZE)  # model pixels -> crop-normalised (z by the crop width)
        return project_points(local, rect), presence
