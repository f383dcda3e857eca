"""How steady is a trained avatar's held-out tail for each amount of head-pose steadying?

`prepare` low-passes the head pose the tracker measured (``--pose-steadying`` sigma, in frames,
:mod:`offline_training.dataset.steady_pose`). This re-renders the held-out tail of a trained avatar
with its reference poses refitted per frame from the dataset's landmarks and steadied by each
sigma given, and reads what `train`'s stability report reads: the MSI of lips and jaw over the real
tail's (ratio 1 = as steady as the person; the target band is ±10%), with MediaPipe and, given
``--tracker-model``, a 68-point model; plus the tail's SSIM against the real frames (does the
steadied pose still follow the head?). ``--mouth tracked`` draws the tail's own tracked mouth
instead of the audio model's, which takes the audio model out of the measurement.

The renderer keeps the weights it was trained with (on the poses of its dataset), so this measures
the effect at inference; the avatar must keep every dataset frame as reference.
Writes ``results/pose_steadying-<date>.json`` and ``.md``.

    python benchmarks/pose_steadying.py AVATAR --dataset DS [--sigmas 0 0.5 1] [--mouth audio tracked]
        [--tracker-model pfld.onnx]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from engines.errors import InputError
from engines.geometry.trackers import LandmarkTracker, create_tracker
from offline_training.dataset import AvatarDataset
from offline_training.dataset.steady_pose import per_frame_poses, steady_poses
from offline_training.evaluation.ablation import render_tail, tail_indices, truth_frames
from offline_training.evaluation.image_metrics import ssim
from offline_training.evaluation.tail_stability import compare_tail


def measure(
    avatar: Path,
    dataset: AvatarDataset,
    sigmas: list[float],
    mouths: list[str],
    trackers: list[LandmarkTracker],
) -> list[dict[str, Any]]:
    """One row per (mouth, sigma): SSIM of the tail and each tracker's MSI ratios of lips and jaw."""
    from engines.bundle import AvatarBundle

    bundle = AvatarBundle.load(avatar)
    per_frame = per_frame_poses(dataset)
    truth = truth_frames(dataset, tail_indices(dataset), bundle.config.renderer.image_size)
    rows = []
    for mouth in mouths:
        for sigma in sigmas:
            bundle.reference.pose = steady_poses(per_frame, dataset.source_frame_index, sigma)
            render = render_tail(bundle, dataset, mouth=mouth)
            frames = render.frames[: len(truth)]
            row: dict[str, Any] = {
                "mouth": mouth,
                "sigma": sigma,
                "ssim": float(np.mean([ssim(a, b) for a, b in zip(frames, truth, strict=True)])),
            }
            for tracker in trackers:
                try:
                    [result] = compare_tail(render, dataset, [tracker])
                except InputError as exc:  # a render the tracker cannot follow is a row, not a crash
                    row[tracker.name] = {"error": str(exc)}
                    continue
                row[tracker.name] = {
                    part: {
                        "ratio": result.ratio(part),
                        "interval": [result.interval(part).low, result.interval(part).high],
                        "verdict": result.verdict(part),
                    }
                    for part in ("lip", "jaw")
                }
            print(f"{mouth} mouth, sigma {sigma}: {row}", file=sys.stderr)
            rows.append(row)
    return rows


def _ratios(entry: dict[str, Any]) -> str:
    if "error" in entry:
        return f"— ({entry['error']})"
    return ", ".join(
        f"{entry[part]['ratio']:.2f} ({entry[part]['interval'][0]:.2f}–{entry[part]['interval'][1]:.2f})"
        for part in ("lip", "jaw")
    )


def markdown(result: dict[str, Any]) -> str:
    trackers = result["trackers"]
    columns = ["mouth", "sigma (frames)", "tail SSIM"] + [f"lip, jaw ({name})" for name in trackers]
    rows = [
        [
            row["mouth"],
            f"{row['sigma']:g}",
            f"{row['ssim']:.4f}",
            *(_ratios(row[name]) for name in trackers),
        ]
        for row in result["rows"]
    ]
    lines = [
        f"# Head-pose steadying — {result['date']}",
        "",
        common.machine_line(result),
        "",
        f"Avatar `{result['avatar']}` (its dataset prepared with sigma {result['dataset_sigma']:g}), "
        f"held-out tail of {result['dataset']}. MSI ratio = rendered tail over real tail "
        "(1 = as steady as the person, target 0.90–1.10), with its 90% bootstrap interval.",
        "",
        *common.markdown_table(columns, "lrr" + "l" * len(trackers), rows),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("avatar", type=Path, help="a trained avatar that keeps every dataset frame")
    parser.add_argument("--dataset", type=Path, required=True, help="the dataset it was trained on")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7, 1.0])
    parser.add_argument("--mouth", nargs="+", choices=["audio", "tracked"], default=["audio", "tracked"])
    parser.add_argument("--tracker-model", type=Path, help="a 68-point ONNX landmark model, as eval's")
    parser.add_argument("--quick", action="store_true", help="sigmas 0 and 0.5, the audio model's mouth")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    if any(sigma < 0 for sigma in args.sigmas):
        parser.error("--sigmas must be >= 0")
    sigmas, mouths = ([0.0, 0.5], ["audio"]) if args.quick else (args.sigmas, args.mouth)
    dataset = AvatarDataset.open(args.dataset)
    trackers = [create_tracker("mediapipe")]
    if args.tracker_model is not None:
        trackers.append(create_tracker("onnx68", args.tracker_model))
    rows = measure(args.avatar, dataset, sigmas, mouths, trackers)
    common.report(
        "pose_steadying",
        args,
        markdown,
        avatar=str(args.avatar),
        dataset=str(args.dataset),
        dataset_sigma=dataset.manifest.pose_steadying_frames,
        trackers=[tracker.name for tracker in trackers],
        rows=rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
