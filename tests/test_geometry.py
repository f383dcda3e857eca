"""Crop box, paste-back, pose fitting, face model, raster and masks on synthetic geometry."""

from __future__ import annotations

import numpy as np
import pytest

from engines.errors import InputError
from engines.geometry.crop import CropBox, crop_box_from_landmarks, feather_mask, paste_back
from engines.geometry.face_model import FaceModel, fit_face_model
from engines.geometry.layouts import IBUG68, MEDIAPIPE478, anchors_for, mediapipe_triangles
from engines.geometry.masks import mouth_mask
from engines.geometry.pose import fit_similarity
from engines.geometry.raster import rasterize_face_shape


def _textured_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    import cv2

    return np.ascontiguousarray(cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC))


def test_crop_then_paste_back_restores_the_frame() -> None:
    frame = _textured_frame(360, 640)
    box = CropBox(200.0, 60.0, 256.0)
    crop = box.crop(frame, 256)
    assert crop.shape == (256, 256, 3)
    np.testing.assert_array_equal(crop, frame[60:316, 200:456])
    restored = paste_back(frame, crop, box)
    assert np.abs(restored.astype(int) - frame.astype(int)).max() <= 1


def test_paste_back_changes_only_the_box_and_feathers_its_edge() -> None:
    frame = np.full((300, 400, 3), 100, np.uint8)
    box = CropBox(100.5, 40.25, 200.0)
    rendered = np.full((128, 128, 3), 200, np.uint8)
    out = paste_back(frame, rendered, box)
    assert (out[:, :100] == 100).all() and (out[:, 301:] == 100).all() and (out[:40] == 100).all()
    centre = out[140, 200]
    assert (centre == 200).all()
    edge = out[140, 102].astype(int)
    assert 100 < edge[0] < 200  # feathered, not a hard seam


def test_paste_back_with_resized_crop_round_trips_approximately() -> None:
    frame = _textured_frame(720, 1280, seed=3)
    box = CropBox(500.0, 100.0, 512.0)
    restored = paste_back(frame, box.crop(frame, 256), box)
    inner = (slice(200, 500), slice(650, 900))
    diff = np.abs(restored[inner].astype(float) - frame[inner].astype(float))
    assert diff.mean() < 6.0


def test_crop_box_outside_the_frame_repeats_the_border() -> None:
    frame = _textured_frame(128, 128)
    box = CropBox(-32.0, -32.0, 192.0)
    crop = box.crop(frame, 192)
    np.testing.assert_array_equal(crop[32:160, 32:160], frame)
    np.testing.assert_array_equal(crop[0, 40], frame[0, 8])


def test_crop_box_from_landmarks_is_square_and_centred_on_the_median_face() -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 100, size=(68, 3)).astype(np.float32)
    tracks = np.stack([base + np.array([300 + i % 3, 200, 0], np.float32) for i in range(20)]).astype(
        np.float32
    )
    box = crop_box_from_landmarks(tracks, 1280, 720, margin=0.5)
    assert box.size == pytest.approx(2 * float(np.ptp(base[:, :2], 0).max()), rel=0.02)
    centre = (box.x0 + box.size / 2, box.y0 + box.size / 2)
    assert centre[0] == pytest.approx(float(base[:, 0].min() + base[:, 0].max()) / 2 + 301, abs=1.5)
    assert centre[1] == pytest.approx(float(base[:, 1].min() + base[:, 1].max()) / 2 + 200, abs=1.5)
    assert (
        crop_box_from_landmarks(tracks, 1280, 720).to_dict()
        == box.from_dict(crop_box_from_landmarks(tracks, 1280, 720).to_dict()).to_dict()
    )


def test_to_crop_points_agrees_with_the_crop_matrix() -> None:
    box = CropBox(12.5, -7.0, 300.0)
    points = np.array([[12.5, -7.0, 3.0], [150.0, 120.0, -6.0]], np.float32)
    mapped = box.to_crop_points(points, 150)
    matrix = box.matrix(150)
    expected = points[:, :2] @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped[:, :2], expected, atol=1e-4)
    assert mapped[1, 2] == pytest.approx(-3.0)


def test_feather_mask_is_one_inside_and_zero_at_the_edge() -> None:
    mask = feather_mask(100, 0.1)
    assert mask[50, 50] == 1.0 and mask[0, 50] < 0.05 and mask.min() >= 0.0


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_fit_similarity_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(2)
    source = rng.normal(size=(20, 3)).astype(np.float32)
    rotation = _random_rotation(rng)
    target = (2.5 * source @ rotation.T + [10.0, -4.0, 7.0]).astype(np.float32)
    scale, fitted_rotation, translation = fit_similarity(source, target)
    assert scale == pytest.approx(2.5, rel=1e-4)
    np.testing.assert_allclose(fitted_rotation, rotation, atol=1e-4)
    np.testing.assert_allclose(translation, [10.0, -4.0, 7.0], atol=1e-3)


def _synthetic_tracks(frames: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 68-point face whose mouth opens and closes while the head moves; returns tracks and opening."""
    rng = np.random.default_rng(seed)
    face = rng.uniform(-1, 1, size=(68, 3)).astype(np.float32)
    face[:, 1] = np.linspace(-1, 1, 68)  # spread the points from top to bottom
    face[IBUG68.lips, 1] = np.abs(face[IBUG68.lips, 1]) * 0.3 + 0.6
    face[list(IBUG68.left_eye), 1] = -0.5
    face[list(IBUG68.right_eye), 1] = -0.5
    face[list(IBUG68.left_eye), 0] = -0.5
    face[list(IBUG68.right_eye), 0] = 0.5
    face[IBUG68.nose_bottom] = [0.0, 0.3, 0.0]
    face[list(IBUG68.mouth_corners), 1] = 0.7
    opening = 0.5 + 0.5 * np.sin(np.linspace(0, 8 * np.pi, frames))
    tracks = []
    for t in range(frames):
        shape = face.copy()
        shape[57:60, 1] += 0.3 * opening[t]  # lower lip
        shape[65:68, 1] += 0.3 * opening[t]
        shape[6:11, 1] += 0.2 * opening[t]  # chin
        angle = 0.1 * np.sin(t / 9)
        rotation = np.array(
            [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
        )
        posed = 80 * shape @ rotation.T + [320 + 5 * np.sin(t / 7), 240, 0]
        posed[:, 2] = 0.0
        tracks.append(posed + rng.normal(scale=0.05, size=posed.shape))
    return np.array(tracks, np.float32), opening.astype(np.float32)


def test_face_model_separates_mouth_from_pose_and_explains_the_shapes(tmp_path) -> None:
    tracks, opening = _synthetic_tracks()
    fit = fit_face_model(tracks, "ibug68", mouth_dims=4, upper_dims=4, planar=True)
    assert fit.model.explained_variance > 0.95
    assert set(IBUG68.lips) <= set(fit.model.mouth_region.tolist())
    assert not set(IBUG68.left_eye) & set(fit.model.mouth_region.tolist())
    assert abs(np.corrcoef(fit.mouth_params[:, 0], opening)[0, 1]) > 0.95
    reposed = fit.pose.apply(fit.model.shapes(fit.mouth_params, fit.upper_params))
    assert np.abs(reposed[..., :2] - tracks[..., :2]).mean() < 0.5
    fit.model.save(tmp_path / "fm.safetensors")
    loaded = FaceModel.load(tmp_path / "fm.safetensors")
    np.testing.assert_array_equal(loaded.mouth_basis, fit.model.mouth_basis)
    assert loaded.explained_variance == pytest.approx(fit.model.explained_variance)
    assert loaded.planar and loaded.layout == "ibug68"


def test_face_model_rejects_the_wrong_layout() -> None:
    tracks, _ = _synthetic_tracks(frames=10)
    with pytest.raises(InputError):
        fit_face_model(tracks, "mediapipe478")
    with pytest.raises(InputError):
        anchors_for("nonsense")


def test_face_model_load_rejects_a_missing_or_foreign_file(tmp_path) -> None:
    with pytest.raises(InputError):
        FaceModel.load(tmp_path / "none.safetensors")
    from safetensors.numpy import save_file

    save_file({"mean": np.zeros((2, 3), np.float32)}, str(tmp_path / "old.safetensors"), {"format": "0"})
    with pytest.raises(InputError, match="format"):
        FaceModel.load(tmp_path / "old.safetensors")


def test_mediapipe_triangles_cover_the_mesh_and_leave_the_mouth_open() -> None:
    triangles = mediapipe_triangles()
    assert triangles.shape[1] == 3 and 800 < len(triangles) < 900
    assert len(np.unique(triangles)) == 468
    ring = set(MEDIAPIPE478.inner_lip_ring)
    assert not any(set(tri.tolist()) <= ring for tri in triangles)


def test_raster_fills_triangles_with_interpolated_codes_and_marks_the_mouth() -> None:
    points = np.array([[10, 10, 0], [90, 10, 0], [10, 90, 0], [90, 90, 5]], np.float32)
    triangles = np.array([[0, 1, 2], [1, 3, 2]], np.int32)
    code = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 1]], np.float32)
    image = rasterize_face_shape(points, triangles, code, (0, 1, 3, 2), 100)
    assert image.shape == (100, 100, 4)
    assert image[5, 5].sum() == 0
    np.testing.assert_allclose(image[50, 30, :2], [20 / 80, 40 / 80], atol=0.02)
    np.testing.assert_allclose(image[80, 80, :3], [70 / 80, 70 / 80, 50 / 80 - 0.0], atol=0.15)
    assert image[50, 50, 3] == 1.0 and image[5, 5, 3] == 0.0


def test_raster_draws_the_nearer_triangle_on_top() -> None:
    far = np.array([[0, 0, 10], [60, 0, 10], [0, 60, 10]], np.float32)
    near = np.array([[10, 10, -10], [70, 10, -10], [10, 70, -10]], np.float32)
    points = np.concatenate([near, far])
    code = np.array([[1, 0, 0]] * 3 + [[0, 1, 0]] * 3, np.float32)
    image = rasterize_face_shape(points, np.array([[0, 1, 2], [3, 4, 5]], np.int32), code, (0, 1, 2), 80)
    assert image[20, 20, 0] == pytest.approx(1.0) and image[20, 20, 1] == pytest.approx(0.0)


def test_mouth_mask_covers_the_lower_face_points() -> None:
    tracks, _ = _synthetic_tracks(frames=30)
    fit = fit_face_model(tracks, "ibug68", mouth_dims=2, upper_dims=2, planar=True)
    box = crop_box_from_landmarks(tracks, 640, 480)
    points = box.to_crop_points(tracks[0], 128)
    mask = mouth_mask(points, fit.model.mouth_region, 128)
    assert set(np.unique(mask).tolist()) <= {0, 255}
    for index in IBUG68.lips:
        x, y = np.clip(np.round(points[index, :2]).astype(int), 0, 127)
        assert mask[y, x] == 255
    for index in IBUG68.left_eye:
        x, y = np.clip(np.round(points[index, :2]).astype(int), 0, 127)
        assert mask[y, x] == 0
