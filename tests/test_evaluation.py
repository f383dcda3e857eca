"""MSI (paper Eq. 2-4 with its normalisation) and ``stableface eval``: checks that the metric is right."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d
from scipy.stats import spearmanr

from engines.stability import acceleration_variance, motion_stability_index
from stableface.cli import main

EPS = 1e-5


def test_msi_matches_a_hand_computation() -> None:
    # x: velocities 0 | 1 2 3 4 5 | 0 -> accelerations 1 1 1 1 1 -5: mean 0, variance 30 / 5 = 6
    # y: velocities 0 | 2 0 0 0 0 | 0 -> accelerations 2 -2 0 0 0 0: mean 0, variance 8 / 5 = 1.6
    x = [0.0, 1.0, 3.0, 6.0, 10.0, 15.0]
    y = [0.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    tracks = np.array([x, y]).T[:, None, :]
    np.testing.assert_allclose(acceleration_variance(tracks), [[6.0, 1.6]], rtol=1e-12)
    expected = (1 / (6.0 + EPS) + 1 / (1.6 + EPS)) / 2
    assert motion_stability_index(tracks) == pytest.approx(expected, rel=1e-12)


def test_a_still_point_scores_one_over_epsilon_and_gaps_are_left_out() -> None:
    still = np.zeros((10, 3, 2))
    assert motion_stability_index(still) == pytest.approx(1 / EPS)
    # 1 px per frame: accelerations 1, 0 x 10, -1 (zero velocity before and after). A wild value at
    # frame 4 marked unmeasured drops a3..a5, leaving 1, 0 x 7, -1: mean 0, variance 2 / 8 = 0.25.
    steady = np.cumsum(np.ones((12, 1, 2)), axis=0)
    broken = steady.copy()
    broken[4] = 1000.0
    valid = np.ones(12, dtype=bool)
    valid[4] = False
    assert motion_stability_index(broken, valid) == pytest.approx(1 / (0.25 + EPS), rel=1e-12)
    assert motion_stability_index(broken) < 1e-3
    with pytest.raises(ValueError, match="NaN"):
        motion_stability_index(np.full((5, 1, 2), np.nan))


def _smooth_tracks(frames: int = 250, points: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None, None] / 25.0
    frequency = rng.uniform(0.5, 2.0, (1, points, 2))
    phase = rng.uniform(0, 2 * np.pi, (1, points, 2))
    return 128 + 10 * np.sin(2 * np.pi * frequency * t + phase)


def test_landmark_jitter_lowers_msi_monotonically_and_smoothing_raises_it() -> None:
    base = _smooth_tracks()
    noise = np.random.default_rng(1).normal(size=base.shape)
    scores = [motion_stability_index(base + amplitude * noise) for amplitude in (0, 0.25, 0.5, 1, 2, 4)]
    assert all(a > b for a, b in itertools.pairwise(scores)), scores
    jittered = base + 2 * noise
    smoothed = gaussian_filter1d(jittered, sigma=2.0, axis=0)
    assert motion_stability_index(smoothed) > 5 * motion_stability_index(jittered)


def _shaken(frames: np.ndarray, amplitude: float, seed: int = 0) -> np.ndarray:
    """Every frame moved by its own random offset of up to ``amplitude`` pixels (camera shake)."""
    offsets = np.random.default_rng(seed).uniform(-1, 1, (len(frames), 2)) * amplitude
    side = frames.shape[1]
    return np.stack(
        [
            cv2.warpAffine(
                frame,
                np.array([[1, 0, dx], [0, 1, dy]], np.float64),
                (side, side),
                borderMode=cv2.BORDER_REPLICATE,
            )
            for frame, (dx, dy) in zip(frames, offsets, strict=True)
        ]
    )


@pytest.fixture(scope="module")
def talking_face() -> np.ndarray:
    from offline_training.synthetic import generate_talking_face

    return generate_talking_face(seed=5, duration_s=3.0, size=256).frames


def test_frame_jitter_lowers_video_msi_monotonically_and_smoothing_raises_it(
    talking_face: np.ndarray,
) -> None:
    from engines.geometry.trackers import create_tracker
    from offline_training.evaluation.msi import track_normalised

    tracker = create_tracker("mediapipe")
    try:
        lips, jaws = [], []
        for amplitude in (0, 1, 2, 4, 8):
            tracks = track_normalised(iter(_shaken(talking_face, amplitude)), tracker)
            lips.append(tracks.msi_lip())
            jaws.append(tracks.msi_jaw())
        assert all(a > b for a, b in itertools.pairwise(lips)), lips
        assert all(a > b for a, b in itertools.pairwise(jaws)), jaws
        shaken = _shaken(talking_face, 4).astype(np.float32)
        padded = np.concatenate([shaken[:1], shaken, shaken[-1:]])
        smoothed = (0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]).round().astype(np.uint8)
        steadier = track_normalised(iter(smoothed), tracker)
        assert steadier.msi_lip() > 1.5 * lips[3] and steadier.msi_jaw() > 1.5 * jaws[3]
    finally:
        tracker.close()


def test_the_msi_box_is_four_mouth_widths_around_the_mouth(talking_face: np.ndarray) -> None:
    from engines.geometry.layouts import anchors_for
    from engines.geometry.trackers import create_tracker
    from offline_training.evaluation.msi import MOUTH_SHARE, MSI_SIZE, track_normalised

    tracker = create_tracker("mediapipe")
    try:
        tracks = track_normalised(iter(talking_face[:20]), tracker)
    finally:
        tracker.close()
    left, right = anchors_for(tracks.layout).mouth_corners
    widths = np.linalg.norm(tracks.points[:5, left] - tracks.points[:5, right], axis=1)
    assert widths.mean() / MSI_SIZE == pytest.approx(MOUTH_SHARE, rel=0.1)
    assert tracks.slice_column.shape == (MSI_SIZE, 20, 3)


def test_msi_of_3_s_of_a_real_clip_is_plausible_and_survives_reencoding(
    shared_data_dir: Path, tmp_path: Path
) -> None:
    from engines.geometry.trackers import create_tracker
    from engines.media.decode import iter_video_frames
    from engines.media.encode import write_mp4
    from offline_training.evaluation.msi import track_normalised

    clip = shared_data_dir / "real" / "hdtf" / "WDA_KatieHill_000.mp4"
    frames = list(itertools.islice(iter_video_frames(clip, 25.0), 75))
    reencoded = tmp_path / "reencoded.mp4"
    write_mp4(reencoded, iter(frames), 25.0, crf=8)
    tracker = create_tracker("mediapipe")
    try:
        original = track_normalised(iter(frames), tracker)
        again = track_normalised(iter_video_frames(reencoded, 25.0), tracker)
    finally:
        tracker.close()
    scores = [(tracks.msi_lip(), tracks.msi_jaw()) for tracks in (original, again)]
    assert original.found.all() and len(original.points) == 75
    # A talking face: far below a still one (1 / EPS).
    assert all(0.05 < score < 2.0 for score in scores[0]), scores
    for measured, reference in zip(scores[1], scores[0], strict=True):
        assert measured == pytest.approx(reference, rel=0.10), scores


# A study of the metric on three full real encodes (40 s); the default run checks one short re-encode.
@pytest.mark.slow
def test_msi_of_a_real_clip_survives_reencoding_and_2x_rescaling(
    shared_data_dir: Path, tmp_path: Path
) -> None:
    from engines.geometry.trackers import create_tracker
    from engines.media.decode import iter_video_frames
    from engines.media.encode import write_mp4
    from offline_training.evaluation.msi import track_normalised

    frames = list(iter_video_frames(shared_data_dir / "real" / "hdtf" / "WDA_KatieHill_000.mp4", 25.0))
    reencoded, doubled = tmp_path / "reencoded.mp4", tmp_path / "doubled.mp4"
    write_mp4(reencoded, iter(frames), 25.0, crf=8)
    side = frames[0].shape[1] * 2
    write_mp4(
        doubled,
        (np.asarray(cv2.resize(f, (side, side), interpolation=cv2.INTER_CUBIC), np.uint8) for f in frames),
        25.0,
        crf=8,
    )
    tracker = create_tracker("onnx68", shared_data_dir / "landmarks" / "pfld.onnx")
    sources = {
        "original": lambda: iter(frames),
        "reencoded": lambda: iter_video_frames(reencoded, 25.0),
        "doubled": lambda: iter_video_frames(doubled, 25.0),
    }
    try:
        scores = {}
        for name, source in sources.items():
            tracks = track_normalised(source(), tracker)
            scores[name] = (tracks.msi_lip(), tracks.msi_jaw())
    finally:
        tracker.close()
    for name in ("reencoded", "doubled"):
        for measured, original in zip(scores[name], scores["original"], strict=True):
            assert measured == pytest.approx(original, rel=0.10), scores


# A study of the metric on real video (12 clip passes, over a minute), not a code path of its own.
@pytest.mark.slow
def test_68_point_and_mesh_trackers_rank_the_hdtf_clips_alike(shared_data_dir: Path) -> None:
    from engines.geometry.trackers import create_tracker
    from engines.media.decode import iter_video_frames
    from offline_training.evaluation.msi import track_normalised

    clips = sorted((shared_data_dir / "real" / "hdtf").glob("*.mp4"))
    assert len(clips) == 6
    scores: dict[str, list[tuple[float, float]]] = {}
    for name, model in (("onnx68", shared_data_dir / "landmarks" / "pfld.onnx"), ("mediapipe", None)):
        tracker = create_tracker(name, model)
        try:
            scores[name] = []
            for clip in clips:
                tracks = track_normalised(iter_video_frames(clip, 25.0), tracker)
                scores[name].append((tracks.msi_lip(), tracks.msi_jaw()))
        finally:
            tracker.close()
    for region in (0, 1):
        rho = spearmanr([s[region] for s in scores["onnx68"]], [s[region] for s in scores["mediapipe"]])[0]
        assert rho >= 0.6, (region, scores)


@pytest.fixture(scope="module")
def talking_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A synthetic talking face (MP4 with its sound), the same face shaken, and the speech as WAV."""
    from engines.media.encode import write_mp4
    from offline_training.synthetic import generate_talking_face, write_talking_face

    folder = tmp_path_factory.mktemp("eval")
    clip = generate_talking_face(seed=5, duration_s=3.0, size=256)
    video, shaken, speech = folder / "face.mp4", folder / "shaken.mp4", folder / "speech.wav"
    write_talking_face(video, clip)
    write_talking_face(folder / "silent.mp4", clip, audio_path=speech)
    write_mp4(shaken, iter(_shaken(clip.frames, 4)), clip.fps)
    return video, shaken, speech


def test_eval_writes_every_metric_and_the_slices(
    talking_video: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video, shaken, speech = talking_video
    out, slices = tmp_path / "report.json", tmp_path / "slices.png"
    args = ["eval", str(shaken), "--reference", str(video), "--audio", str(speech), "--tracker", "mediapipe"]
    assert main([*args, "--json", str(out), "--slices", str(slices)]) == 0
    printed = capsys.readouterr().out
    assert "MSI lip" in printed and "SSIM" in printed and "LSE-C/LSE-D: skipped" in printed
    report = json.loads(out.read_text())
    for key in ("msi_lip", "msi_jaw", "fps", "tracker", "ssim", "cpbd", "nlmd", "reference_msi_lip"):
        assert key in report
    assert {"reference_msi_jaw", "av_offset_ms", "av_correlation"} <= set(report)
    assert report["tracker"] == "mediapipe" and report["fps"] == 25.0 and report["frames"] == 75
    # The shaken copy is less stable than the clean reference, and it no longer matches it exactly.
    assert report["msi_lip"] < report["reference_msi_lip"] / 3
    assert report["msi_jaw"] < report["reference_msi_jaw"] / 3
    assert 0.3 < report["ssim"] < 0.99 and report["nlmd"] > 0.002
    image = cv2.imread(str(slices))
    assert image is not None and image.shape[0] > 256 and image.shape[1] > 2 * 75


def test_eval_of_a_video_against_itself_is_a_perfect_match(
    talking_video: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    video, _, _ = talking_video
    out = tmp_path / "self.json"
    assert (
        main(["eval", str(video), "--reference", str(video), "--tracker", "mediapipe", "--json", str(out)])
        == 0
    )
    report = json.loads(out.read_text())
    assert report["ssim"] == pytest.approx(1.0) and report["nlmd"] == pytest.approx(0.0)
    assert report["msi_lip"] == pytest.approx(report["reference_msi_lip"])
    # Its own sound track is the speech by default: the synthetic mouth follows it closely.
    assert report["av_correlation"] > 0.5 and abs(report["av_offset_ms"]) <= 80


def _one_line_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_eval_rejects_bad_input_in_one_line(
    talking_video: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video, _, _ = talking_video
    assert "no such file" in _one_line_error(
        capsys, "eval", str(tmp_path / "missing.mp4"), "--tracker", "mediapipe"
    )
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    _one_line_error(capsys, "eval", str(text), "--tracker", "mediapipe")
    noise = tmp_path / "noise.mp4"
    from engines.media.encode import write_mp4

    rng = np.random.default_rng(0)
    write_mp4(noise, (rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(30)), 25.0)
    assert "no face" in _one_line_error(capsys, "eval", str(noise), "--tracker", "mediapipe")
    existing = tmp_path / "exists.json"
    existing.write_text("{}")
    err = _one_line_error(capsys, "eval", str(video), "--tracker", "mediapipe", "--json", str(existing))
    assert "--overwrite" in err and existing.read_text() == "{}"
    assert "onnx68" in _one_line_error(
        capsys, "eval", str(video), "--tracker-model", "x.onnx", "--tracker", "mediapipe"
    )
    weights = tmp_path / "syncnet.pt"
    weights.write_bytes(b"garbage")
    assert str(weights) in _one_line_error(
        capsys, "eval", str(video), "--tracker", "mediapipe", "--syncnet-weights", str(weights)
    )


def test_eval_says_why_sync_is_missing_and_refuses_speech_of_another_length(
    talking_video: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engines.media.decode import load_audio
    from engines.media.encode import write_wav

    silent, speech = talking_video[0].with_name("silent.mp4"), talking_video[2]
    out = tmp_path / "silent.json"
    assert main(["eval", str(silent), "--json", str(out)]) == 0
    assert "skipped: no speech: the video has no sound track" in capsys.readouterr().out
    assert "no sound track" in json.loads(out.read_text())["av_skipped"]
    short = tmp_path / "short.wav"
    write_wav(short, load_audio(speech, 16_000)[:16_000])  # 1 s of the 3 s clip's speech
    err = _one_line_error(capsys, "eval", str(silent), "--audio", str(short))
    assert "do not belong together" in err and "1.00 s" in err


def test_eval_runs_with_no_flags_on_the_installed_tracker_and_names_it(
    talking_video: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plain.json"
    assert main(["eval", str(talking_video[0]), "--json", str(out)]) == 0
    assert "mediapipe" in capsys.readouterr().out
    assert json.loads(out.read_text())["tracker"] == "mediapipe"
    if importlib.util.find_spec("face_alignment") is None:  # asked for, the missing extra is named
        err = _one_line_error(capsys, "eval", str(talking_video[0]), "--tracker", "face-alignment")
        assert "face-alignment" in err or "face_alignment" in err


def test_eval_with_syncnet_weights_reports_lse(
    talking_video: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    import torch

    from offline_training.evaluation.syncnet import SyncNet

    torch.manual_seed(0)
    weights = tmp_path / "syncnet.pt"
    torch.save(SyncNet().state_dict(), weights)  # random weights: the numbers mean nothing, the path is whole
    out = tmp_path / "lse.json"
    video = talking_video[0]
    assert (
        main(
            [
                "eval",
                str(video),
                "--tracker",
                "mediapipe",
                "--syncnet-weights",
                str(weights),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["syncnet"] == str(weights) and report["lse_d"] > 0 and np.isfinite(report["lse_c"])
    assert -15 <= report["lse_offset_frames"] <= 15
