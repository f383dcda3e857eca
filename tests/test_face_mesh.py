"""The face mesh on ONNX Runtime against landmarks recorded once with MediaPipe 0.10.21.

``tests/data/face_mesh_clip.mp4`` is a clip of the project's synthetic talking face and
``tests/data/face_mesh_reference.npz`` holds MediaPipe 0.10.21's ``FaceMesh`` landmarks on it
(``refine_landmarks=True``, video mode), recorded before the ``mediapipe`` package was dropped.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from engines.geometry.trackers.face_mesh import refinement
from engines.geometry.trackers.face_mesh.detector import FaceDetector, ssd_anchors
from engines.geometry.trackers.face_mesh.rects import NormRect, crop_to_tensor, project_points, rect_from_box
from engines.geometry.trackers.face_mesh.sessions import DETECTOR_MODEL, LANDMARK_MODEL, MODELS_DIR
from engines.geometry.trackers.mediapipe_tracker import MediaPipeTracker
from engines.media.decode import iter_video_frames

DATA = Path(__file__).parent / "data"
# Agreement with MediaPipe 0.10.21, in units of the distance between the outer eye corners.
MEAN_TOLERANCE_IOD = 0.0025
MAX_TOLERANCE_IOD = 0.015


@pytest.fixture(scope="module")
def clip_frames() -> list[np.ndarray]:
    return list(iter_video_frames(DATA / "face_mesh_clip.mp4"))


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    with np.load(DATA / "face_mesh_reference.npz") as data:
        assert str(data["mediapipe_version"]) == "0.10.21"
        return np.asarray(data["landmarks"])


def test_landmarks_equal_mediapipe_0_10_21_within_tolerance(
    clip_frames: list[np.ndarray], reference: np.ndarray
) -> None:
    tracker = MediaPipeTracker()
    tracked = [tracker.track_normalized(frame) for frame in clip_frames]
    assert all(points is not None for points in tracked)
    ours = np.stack([p for p in tracked if p is not None])
    assert ours.shape == reference.shape == (75, 478, 3)
    height, width = clip_frames[0].shape[:2]
    scale = np.array([width, height], dtype=np.float32)
    error = np.linalg.norm((ours[:, :, :2] - reference[:, :, :2]) * scale, axis=2)
    iod = np.linalg.norm((reference[:, 33, :2] - reference[:, 263, :2]) * scale, axis=1).mean()
    assert error.mean() < MEAN_TOLERANCE_IOD * iod, f"mean {error.mean():.3f} px, eye distance {iod:.1f} px"
    assert error.max() < MAX_TOLERANCE_IOD * iod, f"max {error.max():.3f} px, eye distance {iod:.1f} px"
    depth_error = np.abs(ours[:, :, 2] - reference[:, :, 2]) * width
    assert depth_error.mean() < MEAN_TOLERANCE_IOD * iod


def test_the_tracker_detects_once_then_follows_its_own_landmarks(
    clip_frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = MediaPipeTracker()
    tracker.track(clip_frames[0])
    detector = tracker._models()[0]
    calls: list[int] = []
    original = detector.detect

    def counted(frame: np.ndarray) -> object:
        calls.append(1)
        return original(frame)

    monkeypatch.setattr(detector, "detect", counted)
    for frame in clip_frames[1:20]:
        assert tracker.track(frame) is not None
    assert calls == []
    tracker.reset()
    tracker.track(clip_frames[0])
    assert calls == [1]


def test_no_face_gives_none_and_the_next_face_is_found_again(clip_frames: list[np.ndarray]) -> None:
    tracker = MediaPipeTracker()
    assert tracker.track(clip_frames[0]) is not None
    noise = np.random.default_rng(0).integers(0, 255, clip_frames[0].shape, dtype=np.uint8)
    assert tracker.track(noise) is None
    assert tracker.track(clip_frames[1]) is not None


def test_the_detector_finds_the_face_box_and_eyes(
    clip_frames: list[np.ndarray], reference: np.ndarray
) -> None:
    detection = FaceDetector(DETECTOR_MODEL).detect(clip_frames[0])
    assert detection is not None and detection.score > 0.8
    xmin, ymin, width, height = detection.box
    nose = reference[0, 1, :2]
    assert xmin < nose[0] < xmin + width and ymin < nose[1] < ymin + height
    # Keypoint 0 is the eye on the image's left (the subject's right), next to mesh iris 468.
    assert np.linalg.norm(detection.keypoints[0] - reference[0, refinement.LEFT_IRIS[0], :2]) < 0.03
    assert np.linalg.norm(detection.keypoints[1] - reference[0, refinement.RIGHT_IRIS[0], :2]) < 0.03


def test_anchor_grid_has_896_cells_in_two_strides() -> None:
    anchors = ssd_anchors()
    assert anchors.shape == (896, 2)
    assert np.allclose(anchors[0], [0.5 / 16, 0.5 / 16]) and np.allclose(anchors[1], anchors[0])
    assert np.allclose(anchors[512], [0.5 / 8, 0.5 / 8]) and np.allclose(anchors[517], anchors[512])
    assert np.allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_crop_and_projection_are_inverse_on_a_rotated_square() -> None:
    image = np.zeros((200, 300, 3), np.uint8)
    image[90:110, 140:160] = 255  # a white square at the centre of the rectangle below
    rect = NormRect(0.5, 0.5, 100 / 300, 100 / 200, rotation=math.radians(30))
    tensor = crop_to_tensor(image, rect, 64, (0.0, 1.0), border_zero=True)
    assert tensor.shape == (1, 64, 64, 3)
    assert tensor[0, 32, 32].min() > 0.99 and tensor[0, 2, 2].max() < 0.01
    corner = project_points(np.array([[0.0, 0.0, 0.1]], np.float32), rect)[0]
    # The crop's top-left corner, turned by 30 degrees about the centre.
    dx, dy = -50.0, -50.0
    angle = math.radians(30)
    expected = (
        150 + dx * math.cos(angle) - dy * math.sin(angle),
        100 + dx * math.sin(angle) + dy * math.cos(angle),
    )
    assert np.allclose(corner[:2] * [300, 200], expected, atol=1e-3)
    assert corner[2] == pytest.approx(0.1 * 100 / 300)


def test_rect_from_box_is_square_in_pixels_and_turned_by_the_eye_line() -> None:
    rect = rect_from_box((0.2, 0.3, 0.2, 0.1), (0.25, 0.35), (0.35, 0.45), (400, 200))
    assert rect.width * 400 == pytest.approx(rect.height * 200) == pytest.approx(1.5 * 80)
    assert rect.rotation == pytest.approx(math.atan2(20, 40))


def test_the_shipped_models_are_the_ones_the_readme_names() -> None:
    readme = (MODELS_DIR / "README.md").read_text()
    for model in (DETECTOR_MODEL, LANDMARK_MODEL):
        digest = hashlib.sha256(model.read_bytes()).hexdigest()
        assert f"{digest}  {model.name}" in readme
    assert "Apache License" in (MODELS_DIR / "LICENSE").read_text()


def _mediapipe_wheel() -> Path | None:
    wheel = os.environ.get("STABLEFACE_MEDIAPIPE_WHEEL")
    return Path(wheel) if wheel and Path(wheel).is_file() else None


@pytest.mark.skipif(
    _mediapipe_wheel() is None,
    reason="set STABLEFACE_MEDIAPIPE_WHEEL to a mediapipe-0.10.21 wheel to re-run the conversion",
)
def test_converting_the_wheel_again_gives_the_shipped_files(tmp_path: Path) -> None:
    pytest.importorskip("tflite")
    import onnx

    from engines.geometry.trackers.face_mesh.tflite_to_onnx import convert

    wheel = _mediapipe_wheel()
    assert wheel is not None
    with zipfile.ZipFile(wheel) as archive:
        for member, shipped in (
            ("mediapipe/modules/face_detection/face_detection_short_range.tflite", DETECTOR_MODEL),
            ("mediapipe/modules/face_landmark/face_landmark_with_attention.tflite", LANDMARK_MODEL),
        ):
            source = tmp_path / Path(member).name
            source.write_bytes(archive.read(member))
            converted = tmp_path / shipped.name
            onnx.save(convert(source), converted)
            assert converted.read_bytes() == shipped.read_bytes()
