"""`stableface prepare` end to end on generated videos, and every bad input it must refuse."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.geometry.face_model import fit_face_model
from engines.media.encode import write_mp4, write_wav
from offline_training.dataset import AvatarDataset
from offline_training.dataset.builder import prepare_dataset
from offline_training.dataset.settings import PrepareSettings
from offline_training.synthetic import generate_talking_face, write_talking_face
from offline_training.synthetic.face_animation import head_motion_track

REPO = Path(__file__).resolve().parents[1]


def _write_wav(path: Path, audio: np.ndarray) -> Path:
    write_wav(path, audio.astype(np.float32))
    return path


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stableface", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("stableface")]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="session")
def clip():
    return generate_talking_face(seed=7, duration_s=4.0, size=256)


@pytest.fixture(scope="session")
def talking_video(tmp_path_factory, clip) -> Path:
    path = tmp_path_factory.mktemp("video") / "talking.mp4"
    write_talking_face(path, clip)
    return path


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, talking_video) -> AvatarDataset:
    out = tmp_path_factory.mktemp("prepared") / "avatar"
    report = prepare_dataset(
        PrepareSettings(video=talking_video, out=out, render_size=128, show_progress=False)
    )
    assert report.frames_per_second > 0
    return AvatarDataset.open(out)


def test_prepare_builds_a_complete_dataset(dataset: AvatarDataset, clip) -> None:
    manifest = dataset.manifest
    assert manifest.schema_version == 1
    assert manifest.num_source_frames == len(clip.frames) == 100
    assert manifest.num_frames == 100 and manifest.dropped_frames == []
    assert manifest.tracker.layout == "mediapipe478"
    assert manifest.face_model.explained_variance >= 0.95
    assert dataset.frame(0).shape == (128, 128, 3)
    assert dataset.face_shape(5).shape == (128, 128, 4)
    assert dataset.mouth_mask(9).shape == (128, 128)
    assert dataset.full_frame(99).shape == (256, 256, 3)
    assert dataset.mouth_params.shape == (100, 32)
    assert dataset.upper_params.shape == (100, 16)
    assert dataset.all_audio_features.shape == (400, 80)
    assert dataset.audio_features(99).shape == (4, 80)
    assert len(dataset.audio()) == 4 * 16_000
    assert len(dataset.pose) == 100
    assert not list(dataset.root.parent.glob(".*partial*"))
    # The face shape is drawn where the face is, the mouth mask over the lower face.
    shape = dataset.face_shape(50)
    mask = dataset.mouth_mask(50) > 0
    assert 0.05 < (shape[..., :3].sum(-1) > 0).mean() < 0.9
    assert 0.01 < mask.mean() < 0.4
    lips = dataset.landmarks[50, [13, 14], :2]
    lip_crop = dataset.crop_box.to_crop_points(lips, 128).mean(0).round().astype(int)
    assert mask[lip_crop[1], lip_crop[0]]


def test_mouth_parameters_follow_the_mouth(dataset: AvatarDataset, clip) -> None:
    landmarks = dataset.landmarks
    eyes = np.linalg.norm(landmarks[:, [33, 133], :2].mean(1) - landmarks[:, [362, 263], :2].mean(1), axis=1)
    opening = np.linalg.norm(landmarks[:, 13, :2] - landmarks[:, 14, :2], axis=1) / eyes
    design = np.c_[dataset.mouth_params, np.ones(len(dataset))]
    coef, *_ = np.linalg.lstsq(design, opening, rcond=None)
    assert np.corrcoef(design @ coef, opening)[0, 1] >= 0.9
    assert np.corrcoef(opening, clip.drawn_opening)[0, 1] > 0.8


def test_the_stored_head_pose_follows_the_head_better_than_the_per_frame_fit(dataset: AvatarDataset) -> None:
    """The clip's head moves by a known smooth track; the tracker adds noise that the steadied pose drops."""
    assert dataset.manifest.pose_steadying_frames == 0.5
    per_frame = fit_face_model(dataset.landmarks, dataset.manifest.tracker.layout)
    np.testing.assert_array_equal(per_frame.mouth_params, dataset.mouth_params)
    motion = head_motion_track(seed=7, frames=len(dataset), fps=25.0)
    design = np.array([[m.dx, m.dy, m.angle_deg, 1.0] for m in motion])

    def unexplained(translation: np.ndarray) -> np.ndarray:
        coef, *_ = np.linalg.lstsq(design, translation, rcond=None)
        return np.asarray((translation - design @ coef).std(0))

    assert np.all(
        unexplained(dataset.pose.translation[:, :2]) < 0.95 * unexplained(per_frame.pose.translation[:, :2])
    )
    jitter = np.diff(dataset.pose.translation[:, :2], 2, axis=0).std()
    assert jitter < 0.8 * np.diff(per_frame.pose.translation[:, :2], 2, axis=0).std()


def test_split_holds_out_the_tail_and_sequences_stay_inside(dataset: AvatarDataset) -> None:
    split = dataset.split(0.2)
    assert len(split.train) == 80 and len(split.validation) == 20
    assert split.train.max() < split.validation.min()
    starts = dataset.sequence_starts(12, split.train)
    assert starts.max() + 12 <= 80 and len(starts) == 69


def test_prepare_with_separate_audio_and_small_length_difference_trims(tmp_path: Path, clip) -> None:
    video = tmp_path / "silent.mp4"
    write_mp4(video, clip.frames, 25.0)
    audio = _write_wav(tmp_path / "speech.wav", clip.audio[: int(3.9 * 16_000)])
    out = tmp_path / "ds"
    result = run_cli("prepare", video, "--audio", audio, "--out", out, "--size", "64", "-q")
    assert result.returncode == 0, result.stderr
    manifest = AvatarDataset.open(out).manifest
    assert manifest.trim.video_duration_s == pytest.approx(4.0)
    assert manifest.trim.audio_duration_s == pytest.approx(3.9)
    assert manifest.num_source_frames == 97
    assert manifest.source.audio_name == "speech.wav"


def test_not_a_video(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 20)
    result = run_cli("prepare", fake, "--out", tmp_path / "ds")
    assert_one_line_error(result, "not a readable audio or video file")
    assert not (tmp_path / "ds").exists()


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("prepare", tmp_path / "nope.mp4", "--out", tmp_path / "ds"), "no such file")


def test_video_without_audio_needs_audio_flag(tmp_path: Path, clip) -> None:
    video = tmp_path / "silent.mp4"
    write_mp4(video, clip.frames, 25.0)
    result = run_cli("prepare", video, "--out", tmp_path / "ds")
    assert_one_line_error(result, "has no audio track; give the speech with --audio")
    assert not (tmp_path / "ds").exists()


def test_audio_and_video_lengths_differ(tmp_path: Path, clip, talking_video: Path) -> None:
    audio = _write_wav(tmp_path / "long.wav", np.concatenate([clip.audio, np.zeros(16_000, np.float32)]))
    result = run_cli("prepare", talking_video, "--audio", audio, "--out", tmp_path / "ds")
    assert_one_line_error(result, "differ by 1.00 s")
    assert not (tmp_path / "ds").exists()


def test_no_face(tmp_path: Path, clip) -> None:
    video = tmp_path / "wall.mp4"
    frames = np.full((75, 128, 128, 3), 90, np.uint8)
    write_mp4(video, frames, 25.0, clip.audio[: 3 * 16_000])
    result = run_cli("prepare", video, "--out", tmp_path / "ds")
    assert_one_line_error(result, "no face found in any frame")
    assert not list(tmp_path.glob("*ds*"))


def test_face_in_too_few_frames(tmp_path: Path, clip) -> None:
    frames = clip.frames.copy()
    frames[30:45] = 40
    frames[80:85] = 40
    video = tmp_path / "gaps.mp4"
    write_mp4(video, frames, 25.0, clip.audio)
    result = run_cli("prepare", video, "--out", tmp_path / "ds")
    assert_one_line_error(result, "a face in only 80% of frames (need 90%)")
    assert "30-44" in result.stderr and "80-84" in result.stderr
    assert not list(tmp_path.glob("*ds*"))


def test_too_short(tmp_path: Path, clip) -> None:
    video = tmp_path / "short.mp4"
    write_mp4(video, clip.frames[:25], 25.0, clip.audio[:16_000])
    assert_one_line_error(run_cli("prepare", video, "--out", tmp_path / "ds"), "too short (1.00 s)")


def test_corrupt_file(tmp_path: Path, talking_video: Path) -> None:
    data = talking_video.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_cli("prepare", truncated, "--out", tmp_path / "ds"), "truncated.mp4")
    garbled = tmp_path / "garbled.mp4"
    garbled.write_bytes(data[:64] + bytes(range(256)) * 40 + data[64 + 256 * 40 :])
    assert_one_line_error(run_cli("prepare", garbled, "--out", tmp_path / "ds2"), "garbled.mp4")
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ds2").exists()


def test_unwritable_out(tmp_path: Path, talking_video: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = run_cli("prepare", talking_video, "--out", blocker / "ds")
    assert_one_line_error(result, "is not a folder")
    result = run_cli("prepare", talking_video, "--out", "/proc/stableface-dataset")
    assert_one_line_error(result, "cannot write there")


def test_existing_out_is_refused_unless_overwrite(tmp_path: Path, talking_video: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_one_line_error(run_cli("prepare", talking_video, "--out", out), "already exists")
    assert (out / "keep.txt").read_text() == "precious"
    result = run_cli("prepare", talking_video, "--out", out, "--overwrite", "--size", "64", "-q")
    assert result.returncode == 0, result.stderr
    assert not (out / "keep.txt").exists()
    assert AvatarDataset.open(out).render_size == 64


def test_bad_option_values_are_one_line_errors(tmp_path: Path, talking_video: Path) -> None:
    result = run_cli("prepare", talking_video, "--out", tmp_path / "ds", "--size", "4096")
    assert_one_line_error(result, "invalid --size")
    result = run_cli("prepare", talking_video, "--out", tmp_path / "ds", "--pose-steadying", "-1")
    assert_one_line_error(result, "--pose-steadying")
    result = run_cli("prepare", talking_video, "--out", tmp_path / "ds", "--tracker", "onnx68")
    assert_one_line_error(result, "onnx68")
