"""The per-avatar face model: our stand-in for DECA/FLAME, fitted on one person's tracked video.

Every frame's landmarks are aligned to a mean shape by a similarity transform fitted on rigid
points (the head pose); principal components of the aligned residuals give linear expression
bases: *mouth* parameters for the lower face (lips, jaw, cheeks: everything below the nose), which
audio drives, and *upper-face* parameters (eyes, brows, forehead), which come from the reference
video at inference. The canonical frame is centred on the rigid points' centroid and scaled so
their RMS radius is 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file, save_file

from engines.errors import InputError
from engines.files import sort_safetensors_metadata
from engines.geometry.layouts import anchors_for, delaunay_triangles, mediapipe_triangles
from engines.geometry.pose import HeadPose, fit_poses

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int32]

FACE_MODEL_FORMAT = 1
ALIGNMENT_ITERATIONS = 3


@dataclass(frozen=True)
class FaceModel:
    """A linear face model of one person.

    ``shape = mean + mouth_params @ mouth_basis + upper_params @ upper_basis`` (flattened over
    N x 3), in the canonical frame.

    Attributes:
        layout: landmark layout name.
        mean: (N, 3) mean aligned shape.
        mouth_basis: (Em, N, 3) orthonormal (as flat vectors), zero outside the mouth region.
        upper_basis: (Eu, N, 3) orthonormal, zero inside the mouth region.
        mouth_std: (Em,) standard deviation of each mouth parameter over the training video.
        upper_std: (Eu,) likewise for the upper-face parameters.
        mouth_region: (Km,) int32 indices of the lower-face points.
        triangles: (M, 3) int32 mesh triangles.
        vertex_code: (N, 3) float32 in [0, 1], each vertex's normalised canonical coordinate
            (the colour of the face-shape image).
        explained_variance: share of the aligned shapes' variance the parameters explain.
        planar: True when the tracker gave no depth (poses are fitted in the image plane).
    """

    layout: str
    mean: FloatArray
    mouth_basis: FloatArray
    upper_basis: FloatArray
    mouth_std: FloatArray
    upper_std: FloatArray
    mouth_region: IntArray
    triangles: IntArray
    vertex_code: FloatArray
    explained_variance: float
    planar: bool

    @property
    def num_points(self) -> int:
        return int(self.mean.shape[0])

    @property
    def mouth_dims(self) -> int:
        return int(self.mouth_basis.shape[0])

    @property
    def upper_dims(self) -> int:
        return int(self.upper_basis.shape[0])

    def shapes(self, mouth_params: FloatArray, upper_params: FloatArray) -> FloatArray:
        """Canonical shapes from parameters.

        Args:
            mouth_params: (T, Em).
            upper_params: (T, Eu).

        Returns:
            (T, N, 3) canonical shapes.
        """
        n = self.num_points
        flat = (
            self.mean.reshape(1, -1)
            + mouth_params @ self.mouth_basis.reshape(self.mouth_dims, -1)
            + upper_params @ self.upper_basis.reshape(self.upper_dims, -1)
        )
        return np.asarray(flat.reshape(-1, n, 3), dtype=np.float32)

    def encode(self, aligned: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Parameters of aligned shapes (least squares, the bases being orthonormal).

        Args:
            aligned: (T, N, 3) shapes in the canonical frame.

        Returns:
            mouth params (T, Em) and upper-face params (T, Eu).
        """
        residual = (aligned - self.mean[None]).reshape(len(aligned), -1)
        mouth = residual @ self.mouth_basis.reshape(self.mouth_dims, -1).T
        upper = residual @ self.upper_basis.reshape(self.upper_dims, -1).T
        return mouth.astype(np.float32), upper.astype(np.float32)

    def save(self, path: str | Path) -> None:
        """Write the model as safetensors (arrays) with its scalars in the metadata."""
        tensors = {
            "mean": self.mean,
            "mouth_basis": self.mouth_basis,
            "upper_basis": self.upper_basis,
            "mouth_std": self.mouth_std,
            "upper_std": self.upper_std,
            "mouth_region": self.mouth_region,
            "triangles": self.triangles,
            "vertex_code": self.vertex_code,
        }
        metadata = {
            "format": str(FACE_MODEL_FORMAT),
            "layout": self.layout,
            "explained_variance": repr(self.explained_variance),
            "planar": json.dumps(self.planar),
        }
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata)
        sort_safetensors_metadata(Path(path))

    @classmethod
    def load(cls, path: str | Path) -> FaceModel:
        """Read a model written by :meth:`save`.

        Raises:
            InputError: missing file or an incompatible format.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: face model not found")
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != str(FACE_MODEL_FORMAT):
            raise InputError(
                f"{path}: face model format {metadata.get('format')!r}, this version reads "
                f"{FACE_MODEL_FORMAT}; prepare the avatar again"
            )
        arrays = load_file(str(path))
        return cls(
            layout=metadata["layout"],
            mean=arrays["mean"],
            mouth_basis=arrays["mouth_basis"],
            upper_basis=arrays["upper_basis"],
            mouth_std=arrays["mouth_std"],
            upper_std=arrays["upper_std"],
            mouth_region=arrays["mouth_region"],
            triangles=arrays["triangles"],
            vertex_code=arrays["vertex_code"],
            explained_variance=float(metadata["explained_variance"]),
            planar=bool(json.loads(metadata["planar"])),
        )


@dataclass(frozen=True)
class FaceModelFit:
    """A fitted model and the parameters of the frames it was fitted on.

    Attributes:
        model: the face model.
        pose: per-frame head pose (T frames).
        mouth_params: (T, Em).
        upper_params: (T, Eu).
    """

    model: FaceModel
    pose: HeadPose
    mouth_params: FloatArray
    upper_params: FloatArray


def _normalise_reference(shape: FloatArray, rigid: list[int]) -> FloatArray:
    centred = shape - shape[rigid].mean(0)
    radius = float(np.sqrt((centred[rigid] ** 2).sum(1).mean()))
    normalised: FloatArray = (centred / max(radius, 1e-9)).astype(np.float32)
    return normalised


def _lower_face_region(mean: FloatArray, layout_name: str) -> IntArray:
    """Points below the nose, measured along the eyes-to-mouth direction of the mean face."""
    anchors = anchors_for(layout_name)
    eyes = (mean[list(anchors.left_eye)].mean(0) + mean[list(anchors.right_eye)].mean(0)) / 2
    mouth = mean[list(anchors.mouth_corners)].mean(0)
    down = (mouth - eyes)[:2]
    down /= max(float(np.linalg.norm(down)), 1e-9)
    depth_of = mean[:, :2] @ down
    threshold = float(depth_of[anchors.nose_bottom]) - 0.02
    return np.flatnonzero(depth_of > threshold).astype(np.int32)


def _principal_components(residual: FloatArray, dims: int) -> tuple[FloatArray, FloatArray]:
    """Top ``dims`` orthonormal directions (dims, D) of (T, D) residuals and their stds (dims,)."""
    dims = max(0, min(dims, residual.shape[0] - 1, residual.shape[1]))
    if dims == 0:
        return np.zeros((0, residual.shape[1]), np.float32), np.zeros(0, np.float32)
    _, sigma, vt = np.linalg.svd(residual.astype(np.float64), full_matrices=False)
    basis = vt[:dims]
    # PCA signs are arbitrary: make each component's largest loading positive so that refits
    # of the same data give the same parameters.
    signs = np.sign(basis[np.arange(dims), np.abs(basis).argmax(1)])
    basis *= signs[:, None]
    std = sigma[:dims] / np.sqrt(max(residual.shape[0] - 1, 1))
    return basis.astype(np.float32), std.astype(np.float32)


def _vertex_code(mean: FloatArray) -> FloatArray:
    low, high = mean.min(0), mean.max(0)
    span = np.where(high - low > 1e-6, high - low, 1.0)
    code = (mean - low) / span
    if float(np.ptp(mean[:, 2])) <= 1e-6:
        code[:, 2] = 0.5
    result: FloatArray = code.astype(np.float32)
    return result


def fit_face_model(
    landmarks: FloatArray, layout_name: str, mouth_dims: int = 32, upper_dims: int = 16, planar: bool = False
) -> FaceModelFit:
    """Fit a face model on one person's tracked frames.

    Args:
        landmarks: (T, N, 3) image-space landmarks of the frames with a face.
        layout_name: their layout (see :mod:`engines.geometry.layouts`).
        mouth_dims: Em, number of mouth parameters (capped by T - 1).
        upper_dims: Eu, number of upper-face parameters (capped by T - 1).
        planar: fit poses in the image plane (trackers without depth).

    Returns:
        The model with every frame's pose and parameters.

    Raises:
        InputError: too few frames or a landmark count that does not match the layout.
    """
    anchors = anchors_for(layout_name)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (anchors.num_points, 3):
        raise InputError(f"landmarks of shape {landmarks.shape} do not match layout {layout_name}")
    if len(landmarks) < 2:
        raise InputError("a face model needs at least 2 frames with a face")
    rigid = list(anchors.rigid)
    dims = 2 if planar else 3
    reference = _normalise_reference(landmarks[len(landmarks) // 2].astype(np.float32), rigid)
    for _ in range(ALIGNMENT_ITERATIONS):
        pose = fit_poses(landmarks, reference, anchors.rigid, dims)
        aligned = pose.remove(landmarks)
        reference = _normalise_reference(aligned.mean(0), rigid)
    pose = fit_poses(landmarks, reference, anchors.rigid, dims)
    aligned = pose.remove(landmarks)
    mean = aligned.mean(0).astype(np.float32)

    mouth_region = _lower_face_region(mean, layout_name)
    in_mouth = np.zeros(anchors.num_points, dtype=bool)
    in_mouth[mouth_region] = True
    residual = aligned - mean[None]
    t = len(landmarks)
    mouth_res = np.where(in_mouth[None, :, None], residual, 0.0).reshape(t, -1)
    upper_res = np.where(in_mouth[None, :, None], 0.0, residual).reshape(t, -1)
    mouth_basis, mouth_std = _principal_components(mouth_res.astype(np.float32), mouth_dims)
    upper_basis, upper_std = _principal_components(upper_res.astype(np.float32), upper_dims)

    if layout_name == "mediapipe478":
        triangles = mediapipe_triangles()
    else:
        triangles = delaunay_triangles(mean[:, :2], anchors.inner_lip_ring)
    model = FaceModel(
        layout=layout_name,
        mean=mean,
        mouth_basis=mouth_basis.reshape(-1, anchors.num_points, 3),
        upper_basis=upper_basis.reshape(-1, anchors.num_points, 3),
        mouth_std=mouth_std,
        upper_std=upper_std,
        mouth_region=mouth_region,
        triangles=triangles,
        vertex_code=_vertex_code(mean),
        explained_variance=0.0,
        planar=planar,
    )
    mouth_params, upper_params = model.encode(aligned)
    reconstructed = model.shapes(mouth_params, upper_params)
    total = float(((aligned - mean[None]) ** 2).sum())
    error = float(((aligned - reconstructed) ** 2).sum())
    explained = 1.0 - error / total if total > 0 else 1.0
    model = FaceModel(**{**model.__dict__, "explained_variance": explained})
    return FaceModelFit(model=model, pose=pose, mouth_params=mouth_params, upper_params=upper_params)
