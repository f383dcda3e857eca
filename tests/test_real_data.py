"""`prepare` on the optional real test clips (skipped where ../shared/data is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.geometry.crop import paste_back
from engines.geometry.layouts import MEDIAPIPE478
from engines.geometry.pose import HeadPose
from engines.media.decode import iter_video_frames
from offline_training.dataset import AvatarDataset
from offline_training.dataset.builder import prepare_dataset
from offline_training.dataset.settings import PrepareSettings
from offline_training.dataset.steady_pose import per_frame_poses

ADDRESS_SECONDS = 10.0


def _first_seconds(video: Path, seconds: float, out: Path) -> Path:
    """The first ``seconds`` of ``video``, picture and sound stream-copied (the same pixels, no re-encode)."""
    import av

    with av.open(str(video)) as source, av.open(str(out), "w") as target:
        kept = [stream for stream in source.streams if stream.type in ("video", "audio")]
        copies = {stream.index: target.add_stream_from_template(stream) for stream in kept}
        for packet in source.demux(*kept):
            # Cut in decode order, so every kept frame still has the frames it refers to.
            if packet.dts is None or packet.dts * packet.time_base >= seconds:
                continue
            packet.stream = copies[packet.stream.index]
            target.mux(packet)
    return out


@pytest.fixture(scope="module")
def obama_clip2(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AvatarDataset:
    folder = shared_data_dir / "real" / "obama"
    out = tmp_path_factory.mktemp("obama") / "clip2"
    prepare_dataset(
        PrepareSettings(
            video=folder / "Obama_clip2.mp4", audio=folder / "Obama_clip2.wav", out=out, show_progress=False
        )
    )
    return AvatarDataset.open(out)


@pytest.fixture(scope="module")
def address_video(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 10 s of the 720p address video (its own sound track inside)."""
    video = shared_data_dir / "real" / "obama" / "obama_address_720p.mp4"
    return _first_seconds(video, ADDRESS_SECONDS, tmp_path_factory.mktemp("address") / "address.mp4")


@pytest.fixture(scope="module")
def obama_address(address_video: Path) -> AvatarDataset:
    out = address_video.parent / "dataset"
    prepare_dataset(PrepareSettings(video=address_video, out=out, show_progress=False))
    return AvatarDataset.open(out)


def _explained_variance(dataset: AvatarDataset, pose: HeadPose | None = None) -> float:
    """Recomputed from the stored landmarks: 1 - reconstruction error / variance of the shapes
    aligned by ``pose`` (default: the stored, steadied pose)."""
    model = dataset.face_model
    aligned = (pose if pose is not None else dataset.pose).remove(dataset.landmarks)
    reconstructed = model.shapes(dataset.mouth_params, dataset.upper_params)
    total = ((aligned - aligned.mean(0)) ** 2).sum()
    return float(1.0 - ((aligned - reconstructed) ** 2).sum() / total)


def _inner_lip_distance(landmarks: np.ndarray) -> np.ndarray:
    """Raw tracked inner-lip gap over the inter-ocular distance, per frame."""
    anchors = MEDIAPIPE478
    left = landmarks[:, list(anchors.left_eye), :2].mean(1)
    right = landmarks[:, list(anchors.right_eye), :2].mean(1)
    gap = landmarks[:, anchors.inner_lip_top, :2] - landmarks[:, anchors.inner_lip_bottom, :2]
    return np.linalg.norm(gap, axis=1) / np.linalg.norm(left - right, axis=1)


@pytest.fixture(
    params=[
        "obama_address",
        # the separate-audio path is covered on generated video by test_prepare; 750 frames take 13 s
        pytest.param("obama_clip2", marks=pytest.mark.slow),
    ]
)
def real_dataset(request: pytest.FixtureRequest) -> AvatarDataset:
    """A dataset prepared from a real clip: the address video's first 10 s (and, under -m slow, the
    30 s Obama clip with its separate speech file)."""
    dataset: AvatarDataset = request.getfixturevalue(request.param)
    return dataset


@pytest.mark.slow  # see real_dataset
def test_obama_clip_with_separate_audio_makes_a_complete_dataset(obama_clip2: AvatarDataset) -> None:
    manifest = obama_clip2.manifest
    assert manifest.num_source_frames == 750  # 30 s at 25 fps from a 30 fps source
    assert manifest.num_frames >= 0.9 * 750
    assert manifest.source.audio_name == "Obama_clip2.wav"
    assert abs(manifest.trim.audio_duration_s - 30.0) < 0.01
    assert obama_clip2.all_audio_features.shape == (3000, 80)
    assert obama_clip2.frame(len(obama_clip2) - 1).shape == (256, 256, 3)


def test_face_model_explains_the_aligned_shapes(real_dataset: AvatarDataset) -> None:
    manifest = real_dataset.manifest
    per_frame = per_frame_poses(real_dataset)
    explained = _explained_variance(real_dataset, per_frame)
    assert explained >= 0.95
    assert explained == pytest.approx(manifest.face_model.explained_variance, abs=1e-3)
    # The stored pose is steadied: it leaves the tracker's frame-to-frame noise out, and little else.
    assert manifest.pose_steadying_frames > 0
    assert _explained_variance(real_dataset, real_dataset.pose) >= 0.95


def test_mouth_parameters_predict_the_inner_lip_distance_on_unseen_frames(
    real_dataset: AvatarDataset,
) -> None:
    opening = _inner_lip_distance(real_dataset.landmarks)
    design = np.c_[real_dataset.mouth_params, np.ones(len(real_dataset))]
    split = real_dataset.split(0.2)
    coef, *_ = np.linalg.lstsq(design[split.train], opening[split.train], rcond=None)
    held_out = np.corrcoef(design[split.validation] @ coef, opening[split.validation])[0, 1]
    assert held_out >= 0.9
    # The upper face does not carry the mouth.
    upper = np.c_[real_dataset.upper_params, np.ones(len(real_dataset))]
    coef_upper, *_ = np.linalg.lstsq(upper[split.train], opening[split.train], rcond=None)
    assert np.corrcoef(upper[split.validation] @ coef_upper, opening[split.validation])[0, 1] < held_out - 0.2


def test_full_frame_address_video_crops_the_face_and_pastes_back(
    address_video: Path, obama_address: AvatarDataset
) -> None:
    manifest = obama_address.manifest
    assert (manifest.source.video_width, manifest.source.video_height) == (1280, 720)
    assert manifest.num_source_frames == round(ADDRESS_SECONDS * 25)
    assert manifest.num_frames >= 0.9 * manifest.num_source_frames
    box = obama_address.crop_box
    assert box.x0 >= 0 and box.y0 >= 0
    assert box.x0 + box.size <= 1280 and box.y0 + box.size <= 720
    assert box.size < 720
    assert _explained_variance(obama_address) >= 0.95
    index = 40
    source = int(obama_address.source_frame_index[index])
    frame = next(f for i, f in enumerate(iter_video_frames(address_video)) if i == source)
    crop = obama_address.frame(index)
    np.testing.assert_allclose(crop.astype(float), box.crop(frame, 256).astype(float), atol=2)
    restored = paste_back(frame, crop, box)
    x0, y0, size = int(box.x0), int(box.y0), int(box.size)
    inner = restored[y0 + size // 4 : y0 + 3 * size // 4, x0 + size // 4 : x0 + 3 * size // 4].astype(float)
    original = frame[y0 + size // 4 : y0 + 3 * size // 4, x0 + size // 4 : x0 + 3 * size // 4].astype(float)
    assert np.abs(inner - original).mean() < 4.0
    assert (restored[:, : max(0, x0 - 1)] == frame[:, : max(0, x0 - 1)]).all()


def test_prepare_with_the_68_point_onnx_tracker(shared_data_dir: Path, tmp_path: Path) -> None:
    clip = sorted((shared_data_dir / "real" / "hdtf").glob("*.mp4"))[0]
    video = _first_seconds(clip, 4.0, tmp_path / "clip.mp4")
    out = tmp_path / "ibug"
    prepare_dataset(
        PrepareSettings(
            video=video,
            out=out,
            tracker="onnx68",
            tracker_model=shared_data_dir / "landmarks" / "pfld.onnx",
            render_size=128,
            show_progress=False,
        )
    )
    dataset = AvatarDataset.open(out)
    assert dataset.manifest.tracker.layout == "ibug68" and dataset.manifest.face_model.planar
    assert dataset.landmarks.shape[1:] == (68, 3)
    assert set(range(48, 68)) <= set(dataset.face_model.mouth_region.tolist())
    assert _explained_variance(dataset) >= 0.95
    shape = dataset.face_shape(10)
    assert (shape[..., :3].sum(-1) > 0).mean() > 0.1 and shape[..., 3].sum() >= 0
