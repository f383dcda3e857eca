"""``stableface train --budget``: the schedule on a virtual clock, and one real run that stops in time."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engines.bundle import AvatarBundle
from engines.errors import InputError
from offline_training.train import budget
from offline_training.train.budget import (
    BudgetClock,
    Plateau,
    StageWindow,
    format_seconds,
    lr_factor,
    parse_duration,
    stage_seconds,
)
from offline_training.train.settings import TrainSettings, resolved_batch_size
from offline_training.train.trainer import EXPORT_S_PER_FRAME, VALIDATIONS_PER_STAGE, Trainer

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("20m", 1200), ("1h30m", 5400), ("1.5h", 5400), ("2m30s", 150), ("15", 900), (" 45S ", 45)],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "20x", "-5m", "0s", "1h 30m", "ten minutes"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|positive"):
        parse_duration(text)


def test_seconds_are_written_for_people() -> None:
    assert [format_seconds(s) for s in (5, 75, 3725, -3)] == ["5s", "1m15s", "1h02m", "0s"]


def test_learning_rate_warms_up_then_decays_to_its_floor() -> None:
    assert lr_factor(0.0) == pytest.approx(0.01)
    assert lr_factor(budget.WARMUP) == pytest.approx(1.0)
    values = [lr_factor(f / 100) for f in range(3, 101)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert lr_factor(1.0) == pytest.approx(budget.LR_FLOOR)


def test_stages_share_the_time_left() -> None:
    assert stage_seconds("a2e", 600, 2, has_joint=True) == pytest.approx(60)
    assert stage_seconds("renderer", 540, 1, has_joint=True) == pytest.approx(450)
    assert stage_seconds("joint", 90, 0, has_joint=True) == 90
    assert stage_seconds("renderer", 540, 0, has_joint=False) == 540
    assert stage_seconds("renderer", -5, 1, has_joint=True) == 0


def test_plateau_waits_for_patience_and_a_share_of_the_stage() -> None:
    plateau = Plateau(patience=2, higher_is_better=True, min_delta=0.01, min_fraction=0.5)
    assert plateau.update(0.5) and plateau.update(0.6)
    assert not plateau.update(0.55)
    assert plateau.update(0.605)  # better, but by less than min_delta: counts towards the plateau
    assert plateau.since_best == 2 and plateau.best == 0.605
    assert not plateau.stalled(0.4) and plateau.stalled(0.5)
    errors = Plateau(patience=1, higher_is_better=False, min_delta=0.0)
    assert errors.update(1.0) and errors.update(0.9) and not errors.update(math.nan)
    assert errors.stalled(0.0)


def test_budget_clock_and_stage_window_read_an_injected_clock() -> None:
    now = [100.0]
    clock = BudgetClock(60.0, spent_s=5.0, clock=lambda: now[0])
    now[0] += 10
    assert clock.elapsed() == pytest.approx(15.0) and clock.left() == pytest.approx(45.0)
    window = StageWindow(start_s=10.0, planned_s=20.0)
    assert (window.fraction(5.0), window.fraction(20.0), window.fraction(40.0)) == (0.0, 0.5, 1.0)
    assert window.end_s == 30.0


def test_batch_follows_the_device_unless_given() -> None:
    assert resolved_batch_size(None, "small", "cpu") == 2
    assert resolved_batch_size(None, "paper", "cuda") == 8
    assert resolved_batch_size(None, "small", "cuda") == 16
    assert resolved_batch_size(5, "paper", "cuda") == 5


def test_budget_excludes_step_counts_and_resume(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--budget or --steps"):
        TrainSettings(dataset=tmp_path, out=tmp_path / "o", budget_s=60, steps=10)
    with pytest.raises(ValueError, match="afresh"):
        TrainSettings(dataset=tmp_path, out=tmp_path / "o", budget_s=60, resume=True)


class _StepClock:
    """Virtual seconds: each training step charges its modelled cost, nothing else takes time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_budgeted_run_follows_its_schedule_on_a_virtual_clock(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 200 s budget where an audio step costs 0.01 s and a renderer step 2 s: the audio model
    stops on its plateau long before its 20 s, the renderer takes 5/6 of what is left and the
    joint stage the rest, the learning rate ends at its floor, and the run ends inside the budget."""
    clock = _StepClock()
    costs = {"a2e": 0.01, "renderer": 2.0}
    a2e_step, renderer_step = Trainer._a2e_step, Trainer._renderer_step
    rates: list[float] = []

    def charged_a2e(self: Trainer, model: Any) -> dict[str, float]:
        clock.now += costs["a2e"]
        return a2e_step(self, model)

    def charged_renderer(self: Trainer, *args: Any) -> dict[str, float]:
        clock.now += costs["renderer"]
        rates.append(self.optimizers["renderer"].param_groups[0]["lr"])
        return renderer_step(self, *args)

    monkeypatch.setattr(Trainer, "_a2e_step", charged_a2e)
    monkeypatch.setattr(Trainer, "_renderer_step", charged_renderer)
    settings = TrainSettings(
        dataset=synthetic_dataset,
        out=tmp_path / "avatar",
        preset="tiny",
        budget_s=200,
        show_progress=False,
        stability_report=False,
    )
    trainer = Trainer(settings, clock=clock)
    report = trainer.run()
    assert trainer.budget is not None
    elapsed = trainer.budget.elapsed()
    steps = report.steps
    assert 0 < steps["a2e"] * costs["a2e"] < 0.1 * 200  # stopped on its plateau
    # Only steps cost virtual time, so the final phase's reserve is its export estimate alone.
    reserve = max(budget.MIN_RESERVE_S, budget.RESERVE_MARGIN * 200 * EXPORT_S_PER_FRAME)
    left = 200 - steps["a2e"] * costs["a2e"] - reserve
    renderer_s = (1 - budget.JOINT_SHARE) * left
    assert steps["renderer"] == pytest.approx(renderer_s / 2, abs=1.5)
    assert steps["joint"] == pytest.approx((left - steps["renderer"] * 2) / 2, abs=1.5)
    assert 200 - reserve - 2.5 <= elapsed <= 200 - reserve + 1e-6
    assert rates[-1] <= 1.2 * settings.renderer_lr * budget.LR_FLOOR
    assert max(rates) == pytest.approx(settings.renderer_lr, rel=0.05)
    lines = [json.loads(line) for line in (tmp_path / "avatar" / "training" / "metrics.jsonl").open()]
    validations = [line for line in lines if line["stage"] == "renderer" and "val/ssim" in line]
    assert VALIDATIONS_PER_STAGE - 2 <= len(validations) <= VALIDATIONS_PER_STAGE + 2
    saved = json.loads((tmp_path / "avatar" / "training" / "report.json").read_text())
    assert saved["budget_s"] == 200 and saved["elapsed_s"] == pytest.approx(elapsed)
    AvatarBundle.load(tmp_path / "avatar")


@pytest.mark.realtime  # the budget is wall-clock time: ±10% of 45 s holds on a busy 2-core machine
def test_a_short_budget_stops_in_time_and_reports_the_tail_stability(
    synthetic_dataset: Path, tmp_path: Path
) -> None:
    """The command line, on the wall clock: a 45 s budget on the synthetic face makes an avatar
    in 45 s ± 10% (start-up included), printing progress, the validation and the tail's MSI — or,
    when MediaPipe finds no face in the rendered tail, saying so. A `tiny` renderer after 45 s is a
    blur at the edge of what the face detector takes (validation SSIM 0.66-0.69 here): with the
    machine busy it gets a few steps fewer and no face is found (2 runs of 6 here), which is the
    report's other honest answer, not a failure of the budget."""
    out = tmp_path / "avatar"
    command = [sys.executable, "-m", "stableface", "train", str(synthetic_dataset), "--out", str(out)]
    command += ["--preset", "tiny", "--budget", "45s"]
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert 45 * 0.9 <= wall <= 45 * 1.1, (wall, result.stderr[-2000:])
    assert "run ends in" in result.stderr
    report = json.loads((out / "training" / "report.json").read_text())
    assert report["voice_augmentation"] is True  # the default
    validation = report["validation"]
    for key in ("val/ssim", "val/mouth_landmark_distance"):
        assert math.isfinite(validation[key]), key
    if "held-out tail stability not measured: no face found in the video" in result.stderr:
        assert not any(key.startswith("tail/") for key in validation), validation
    else:
        measured = "MSI lip (mediapipe" in result.stderr and "MSI jaw (mediapipe" in result.stderr
        assert measured, result.stderr[-2000:]
        assert math.isfinite(validation["tail/mediapipe/msi_lip_ratio"])
        for part in ("lip", "jaw"):
            low, high = (validation[f"tail/mediapipe/msi_{part}_ratio_{end}"] for end in ("low", "high"))
            assert math.isfinite(low) and math.isfinite(high) and low <= high
    bundle = AvatarBundle.load(out)
    assert int(bundle.manifest.training["steps_renderer"]) > 0


def test_a_missing_tracker_model_is_refused_before_training(synthetic_dataset: Path, tmp_path: Path) -> None:
    settings = TrainSettings(
        dataset=synthetic_dataset,
        out=tmp_path / "a",
        preset="tiny",
        steps=1,
        tracker_model=tmp_path / "no.onnx",
    )
    with pytest.raises(InputError, match="no such file"):
        Trainer(settings)
    assert not (tmp_path / "a").exists()


def test_voice_variants_retime_the_targets_and_never_touch_the_tail(synthetic_dataset: Path) -> None:
    from offline_training.dataset import AvatarDataset
    from offline_training.train.data import AudioWindows
    from offline_training.train.voice_augmentation import MixedAudioWindows, make_variants

    dataset = AvatarDataset.open(synthetic_dataset)
    split = dataset.split(0.2)
    variants = make_variants(dataset, split.train, window=20, seed=0, count=4)
    again = make_variants(dataset, split.train, window=20, seed=0, count=4)
    assert len(variants) == 4
    own = AudioWindows(dataset, split.train, 20)
    params = dataset.mouth_params / np.maximum(dataset.face_model.mouth_std, 1e-6)
    train_params = params[split.train]
    for variant, same in zip(variants, again, strict=True):
        np.testing.assert_array_equal(variant.audio, same.audio)
        assert variant.audio.shape == (len(variant.params), own._audio.shape[1])
        assert np.isfinite(variant.audio).all()
        assert abs(float(variant.audio.mean())) < 0.1  # normalised over the variant
        known = variant.params[~np.isnan(variant.params).any(axis=1)]
        # every target is some training frame's parameters: re-timed, never from the tail
        distances = np.abs(known[:, None, :] - train_params[None]).max(axis=2).min(axis=1)
        assert distances.max() < 1e-6
    mixed = MixedAudioWindows(own, variants)
    audio, targets = mixed.batch(8, np.random.default_rng(0))
    assert audio.shape == (8, 20, own._audio.shape[1]) and targets.shape == (8, 20, params.shape[1])
    assert torch.isfinite(targets).all()
