"""``stableface ablate`` end to end with the ``tiny`` preset: numbers meaningless, pipeline whole."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from offline_training.evaluation.ablation import tail_indices, variants_named
from stableface.cli import main

# Three of the six variants: every variant's training is tested in test_training; this is the
# ablate pipeline (train, render, measure, tabulate, study kit), the same for each variant.
VARIANTS = variants_named(["full", "no_smoothing", "baseline"])


@pytest.fixture(scope="module")
def ablation(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("ablation") / "table"
    args = ["ablate", str(synthetic_dataset), "--out", str(out), "--preset", "tiny", "--steps", "3"]
    args += ["--tracker", "mediapipe", "-q", "--variants", *(variant.name for variant in VARIANTS)]
    assert main(args) == 0
    return out, args


def test_ablate_trains_renders_and_tabulates_every_variant(
    ablation: tuple[Path, list[str]], synthetic_dataset: Path
) -> None:
    from offline_training.dataset import AvatarDataset
    from offline_training.evaluation.ablation import load_render

    out, _ = ablation
    tail = len(tail_indices(AvatarDataset.open(synthetic_dataset)))
    for variant in VARIANTS:
        assert (out / "models" / f"{variant.name}-seed0" / "avatar.json").is_file()
        render = load_render(out / "renders" / f"{variant.name}-seed0.npz")
        assert render.frames.shape == (tail, 64, 64, 3) and render.fps == 25.0
    table = (out / "table_v.md").read_text()
    for label in ["Real video", *(variant.label for variant in VARIANTS)]:
        assert label in table
    assert "SSIM" in table and "MSI-Lip" in table and "Preset `tiny`, 3 steps per stage" in table
    with (out / "table_v.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["variant"] for row in rows] == ["real", *(variant.name for variant in VARIANTS)]
    assert set(rows[0]) == {"variant", "label", "seed", "ssim", "sync", "nlmd", "msi_lip", "msi_jaw", "cpbd"}
    assert np.isfinite(float(rows[0]["msi_lip"]))  # the real tail is always measurable
    assert (out / "table_v.png").stat().st_size > 10_000


def test_ablate_writes_a_blind_study_kit(ablation: tuple[Path, list[str]], synthetic_dataset: Path) -> None:
    from engines.media.decode import probe_media
    from offline_training.dataset import AvatarDataset

    kit = ablation[0] / "mos"
    clips, pairs = sorted((kit / "clips").glob("*.mp4")), sorted((kit / "pairs").glob("*.mp4"))
    assert len(clips) == len(VARIANTS) + 1 and len(pairs) == len(VARIANTS) - 1
    tail = len(tail_indices(AvatarDataset.open(synthetic_dataset)))
    info = probe_media(clips[0])
    assert info.has_audio and info.width == 256 and abs(info.video_duration_s - tail / 25) < 0.1
    assert probe_media(pairs[0]).width == 512
    with (kit / "key.csv").open() as handle:
        key = list(csv.reader(handle))[1:]
    assert {row[1] for row in key[: len(clips)]} == {"real", *(variant.name for variant in VARIANTS)}
    assert all("full" in row[1:] for row in key[len(clips) :])
    # Blind: no model name appears in what raters get.
    for name in ("order.csv", "ratings.csv"):
        text = (kit / name).read_text()
        assert not any(variant.name in text for variant in VARIANTS), name
        assert len(text.strip().splitlines()) == len(clips) + len(pairs) + 1
    assert "key.csv" in (kit / "README.md").read_text()


def test_ablate_takes_what_is_already_there(ablation: tuple[Path, list[str]]) -> None:
    out, args = ablation
    renders = sorted((out / "renders").glob("*.npz"))
    before = {path: path.stat().st_mtime_ns for path in renders}
    assert main(args) == 0
    assert {path: path.stat().st_mtime_ns for path in renders} == before


def test_ablate_rejects_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["ablate", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--tracker", "mediapipe"])
        == 1
    )
    assert main(["ablate", str(tmp_path), "--out", str(tmp_path / "o"), "--variants", "nonsense"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "no such dataset" in errors[0] and "unknown variant" in errors[1]


def test_the_tail_can_be_drawn_with_its_tracked_mouth(tiny_avatar: Path, synthetic_dataset: Path) -> None:
    from engines.bundle import AvatarBundle
    from engines.offline_render import plan_render
    from offline_training.dataset import AvatarDataset
    from offline_training.evaluation.ablation import render_tail, tail_audio

    dataset = AvatarDataset.open(synthetic_dataset)
    bundle = AvatarBundle.load(tiny_avatar)
    indices = tail_indices(dataset)
    tracked = dataset.mouth_params[indices]
    plan = plan_render(bundle, tail_audio(dataset, indices), reference_index=indices, mouth_params=tracked)
    np.testing.assert_array_equal(plan.mouth_params, tracked)
    np.testing.assert_allclose(
        plan.normalised_params * bundle.face_model.mouth_std, tracked, rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="mouth_params"):
        plan_render(bundle, tail_audio(dataset, indices), reference_index=indices, mouth_params=tracked[1:])

    by_audio = render_tail(bundle, dataset, mouth="audio")
    by_tracking = render_tail(bundle, dataset, mouth="tracked")
    assert by_audio.frames.shape == by_tracking.frames.shape
    assert not np.array_equal(by_audio.frames, by_tracking.frames)
    with pytest.raises(ValueError, match="mouth"):
        render_tail(bundle, dataset, mouth="typed")


def test_the_real_tail_is_exactly_as_steady_as_itself(synthetic_dataset: Path) -> None:
    from engines.geometry.trackers import create_tracker
    from offline_training.dataset import AvatarDataset
    from offline_training.evaluation.ablation import TailRender, truth_frames
    from offline_training.evaluation.tail_stability import compare_tail

    dataset = AvatarDataset.open(synthetic_dataset)
    indices = tail_indices(dataset)
    real = TailRender(frames=truth_frames(dataset, indices, dataset.render_size), fps=25.0, first_frame=0)
    [result] = compare_tail(real, dataset, [create_tracker("mediapipe")])
    assert result.frames == len(indices)
    assert result.ratio("lip") == pytest.approx(1.0) and result.ratio("jaw") == pytest.approx(1.0)
    assert result.verdict("jaw") == "within ±10%"
    for part in ("lip", "jaw"):
        interval = result.interval(part)
        assert interval.low == pytest.approx(1.0) and interval.high == pytest.approx(1.0)
        assert result.decided(part)
    assert "[90%: 1.00-1.00]" in result.lines()[0]
