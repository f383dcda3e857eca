"""``stableface ablate``, second half: measure every variant's render of the held-out tail against
the real tail and write Table V (Markdown, CSV, bar plot), per-render reports, jitter slices and a
blind subjective-study kit (:mod:`offline_training.evaluation.mos_kit`).

Columns follow the paper's Table V: SSIM, lip sync, NLMD, MSI-Lip, MSI-Jaw (plus CPBD). The sync
column is LSE-C when SyncNet weights are given, else the weights-free correlation between mouth
opening and the speech envelope. With several seeds every cell is the mean, with the spread
(sample standard deviation over seeds) beside it: differences smaller than that are noise.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import InputError
from engines.files import atomic_output
from engines.geometry.trackers import LandmarkTracker
from offline_training.dataset import AvatarDataset
from offline_training.evaluation.ablation import (
    TrainingPlan,
    Variant,
    tail_audio,
    tail_indices,
    train_and_render,
    truth_frames,
)
from offline_training.evaluation.mos_kit import write_mos_kit
from offline_training.evaluation.video_report import Footage, VideoReport, evaluate_footage

logger = logging.getLogger(__name__)

REAL = "real"


@dataclass(frozen=True)
class Column:
    """A Table V column: report field, heading, and whether higher is better."""

    key: str
    heading: str
    higher_is_better: bool
    digits: int = 3


COLUMNS = (
    Column("ssim", "SSIM↑", True),
    Column("sync", "Sync↑", True),
    Column("nlmd", "NLMD↓", False, 4),
    Column("msi_lip", "MSI-Lip↑", True),
    Column("msi_jaw", "MSI-Jaw↑", True),
    Column("cpbd", "CPBD↑", True),
)


@dataclass
class AblationResult:
    """Table V and where everything was written."""

    markdown: str
    rows: dict[str, dict[str, list[float]]]
    files: list[Path] = field(default_factory=list)


def run_ablation(
    dataset_path: Path,
    out: Path,
    variants: list[Variant],
    plan: TrainingPlan,
    seeds: list[int],
    tracker: LandmarkTracker,
    syncnet: tuple[str, Any] | None = None,
) -> AblationResult:
    """Train (or take) and render every variant, measure them, and write Table V and the MOS kit."""
    out.mkdir(parents=True, exist_ok=True)
    renders = train_and_render(dataset_path, out, variants, plan, seeds)
    dataset = AvatarDataset.open(dataset_path)
    indices = tail_indices(dataset)
    speech = tail_audio(dataset, indices)
    first = next(iter(renders.values()))
    truth = truth_frames(dataset, indices, first.frames.shape[1])
    real = Footage.from_array("real tail", truth, first.fps)
    reports_dir, slices_dir = out / "reports", out / "slices"
    reports_dir.mkdir(exist_ok=True)
    slices_dir.mkdir(exist_ok=True)
    measured: dict[str, dict[str, list[float]]] = {}
    failures: list[str] = []
    try:
        real_report = evaluate_footage(
            real, tracker, speech=speech, speech_name="tail speech", syncnet=syncnet
        )
    except InputError as exc:
        logger.warning("the real tail: not measured: %s", exc)
        failures.append(f"{REAL}: {exc}")
        measured[REAL] = {column.key: [float("nan")] for column in COLUMNS}
    else:
        _write_json(reports_dir / f"{REAL}.json", real_report.to_json())
        measured[REAL] = {column.key: [_cell(real_report, column.key)] for column in COLUMNS}
    for variant in variants:
        values: dict[str, list[float]] = {column.key: [] for column in COLUMNS}
        for seed in seeds:
            render = renders[variant.name, seed]
            name = f"{variant.name}-seed{seed}"
            logger.info("measuring %s", name)
            try:
                report = evaluate_footage(
                    Footage.from_array(name, render.frames[: len(truth)], render.fps),
                    tracker,
                    reference=real,
                    speech=speech,
                    speech_name="tail speech",
                    syncnet=syncnet,
                    slices=slices_dir / f"{name}.png",
                )
            except InputError as exc:  # a render the tracker cannot follow: a finding, not a crash
                logger.warning("%s: not measured: %s", name, exc)
                failures.append(f"{name}: {exc}")
                for column in COLUMNS:
                    values[column.key].append(float("nan"))
                continue
            _write_json(reports_dir / f"{name}.json", report.to_json())
            for column in COLUMNS:
                values[column.key].append(_cell(report, column.key))
        measured[variant.name] = values
    labels = {variant.name: variant.label for variant in variants} | {REAL: "Real video (held-out tail)"}
    sync_name = "LSE-C" if syncnet is not None else "A/V correlation (weights-free)"
    markdown = table_markdown(measured, labels, seeds, plan, tracker.name, sync_name, len(truth), first.fps)
    if failures:
        markdown += "\nNot measured (shown as —, left out of the means):\n" + "".join(
            f"- {failure}\n" for failure in failures
        )
    files = [
        _write_text(out / "table_v.md", markdown),
        _write_csv(out / "table_v.csv", measured, labels, seeds),
        _write_plot(out / "table_v.png", measured, labels),
    ]
    kit = write_mos_kit(
        out / "mos",
        {variant.name: renders[variant.name, seeds[0]].frames for variant in variants},
        truth,
        speech,
        first.fps,
    )
    files.append(kit)
    return AblationResult(markdown=markdown, rows=measured, files=files)


def _cell(report: VideoReport, key: str) -> float:
    if key == "sync":
        value = report.lse_c if report.syncnet is not None else report.av_correlation
    else:
        value = getattr(report, key)
    return float("nan") if value is None else float(value)


def _summary(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the measured (finite) values; NaN where too few."""
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if len(array) == 0:
        return float("nan"), float("nan")
    spread = float(array.std(ddof=1)) if len(array) > 1 else float("nan")
    return float(array.mean()), spread


def table_markdown(
    measured: dict[str, dict[str, list[float]]],
    labels: dict[str, str],
    seeds: list[int],
    plan: TrainingPlan,
    tracker: str,
    sync_name: str,
    frames: int,
    fps: float,
) -> str:
    """Table V as Markdown: mean (± spread over seeds); the best model value of each column bold."""
    best: dict[str, float] = {}
    for column in COLUMNS:
        means = [_summary(values[column.key])[0] for name, values in measured.items() if name != REAL]
        finite = [value for value in means if np.isfinite(value)]
        if finite:
            best[column.key] = max(finite) if column.higher_is_better else min(finite)
    lines = [
        "| Method | " + " | ".join(column.heading for column in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for name, values in measured.items():
        cells = []
        for column in COLUMNS:
            mean, spread = _summary(values[column.key])
            text = f"{mean:.{column.digits}f}" if np.isfinite(mean) else "—"
            if name != REAL and best.get(column.key) == mean:
                text = f"**{text}**"
            if np.isfinite(spread):
                text += f" ± {spread:.{column.digits}f}"
            cells.append(text)
        lines.append(f"| {labels[name]} | " + " | ".join(cells) + " |")
    steps = f"{plan.steps} steps per stage" if plan.steps else f"{plan.epochs or 1:g} epochs per stage"
    lines += [
        "",
        f"Preset `{plan.preset}`, {steps}, batch {plan.batch_size or 'for the device'}, "
        f"device {plan.device}, "
        f"seeds {', '.join(map(str, seeds))} (± is the spread over seeds). Held-out tail: {frames} frames "
        f"at {fps:g} fps, driven by its own speech, compared with the real tail at the renderer's size. "
        f"Landmarks: {tracker}. Sync: {sync_name}.",
    ]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> Path:
    with atomic_output(path) as partial:
        partial.write_text(text)
    return path


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    return _write_text(path, json.dumps(data, indent=2) + "\n")


def _write_csv(
    path: Path, measured: dict[str, dict[str, list[float]]], labels: dict[str, str], seeds: list[int]
) -> Path:
    """One row per model and seed (seed empty for the real video), then one mean row per model."""
    with atomic_output(path) as partial, partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "label", "seed", *(column.key for column in COLUMNS)])
        for name, values in measured.items():
            runs = [""] if name == REAL else [str(seed) for seed in seeds]
            for position, seed in enumerate(runs):
                writer.writerow([name, labels[name], seed, *(values[c.key][position] for c in COLUMNS)])
            if len(runs) > 1:
                means = [_summary(values[column.key])[0] for column in COLUMNS]
                writer.writerow([name, labels[name], "mean", *means])
    return path


def _write_plot(path: Path, measured: dict[str, dict[str, list[float]]], labels: dict[str, str]) -> Path:
    """One bar chart per column, a bar per model (error bars: spread over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(measured)
    figure, axes = plt.subplots(1, len(COLUMNS), figsize=(3.2 * len(COLUMNS), 4.2))
    colours = ["#888888" if name == REAL else f"C{index}" for index, name in enumerate(names)]
    for axis, column in zip(axes, COLUMNS, strict=True):
        summaries = [_summary(measured[name][column.key]) for name in names]
        means = [mean for mean, _ in summaries]
        spreads = [spread if np.isfinite(spread) else 0.0 for _, spread in summaries]
        axis.bar(range(len(names)), means, yerr=spreads, color=colours, capsize=3)
        axis.set_title(column.heading)
        axis.set_xticks(range(len(names)))
        axis.set_xticklabels(
            [labels[name].replace("w/o ", "w/o\n") for name in names], rotation=60, ha="right", fontsize=7
        )
        ends = [(m - d, m + d) for m, d in zip(means, spreads, strict=True) if np.isfinite(m)]
        if ends:
            low, high = min(end[0] for end in ends), max(end[1] for end in ends)
            margin = (high - low) * 0.3 or abs(high) * 0.05 or 0.01
            axis.set_ylim(low - margin, high + margin)
    figure.tight_layout()
    try:
        with atomic_output(path) as partial:
            figure.savefig(partial, dpi=110)
    finally:
        plt.close(figure)
    return path
