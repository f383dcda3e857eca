"""``stableface eval`` and ``stableface ablate``: the paper's metrics on videos, and Table V."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from engines.errors import InputError, OutputError
from offline_training.train.settings import TrainSettings
from stableface.argtypes import PRESET_NAMES, default_of, positive_float, positive_int

TRACKER_HELP = (
    "landmark tracker: mediapipe (478-point mesh, lip and jaw subsets; installed, the default), "
    "face-alignment (68 points, the paper's; the [eval] extra, downloads its weights once) or onnx68 "
    "(any 68-point ONNX model given by --tracker-model; the default when one is given). MSI depends on "
    "the tracker: compare numbers made with the same one"
)


def add_eval_parsers(sub: Any) -> None:
    """Register ``eval`` and ``ablate`` on the ``stableface`` sub-command parser."""
    evaluate = sub.add_parser(
        "eval",
        epilog="example: stableface eval talking.mp4 --reference real.mp4 --json report.json",
        help="measure a video: MSI (lip, jaw), sharpness, and against a reference SSIM and NLMD",
        description="Measure the motion stability (MSI, paper Eq. 2-4, with its normalisation: a fixed box "
        "from the first 5 frames, mouth width 0.25 of it, 256x256) of lips and jaw, and CPBD sharpness, "
        "of any video; with --reference also SSIM, NLMD and the reference's own MSI; with speech (--audio, "
        "or the video's sound track) the weights-free A/V offset and correlation; with --syncnet-weights "
        "LSE-C and LSE-D. Prints a table; --json and --slices write the numbers and the jitter slices.",
    )
    evaluate.add_argument("video", type=Path, help="the video to measure")
    evaluate.add_argument("--reference", type=Path, help="ground-truth video of the same speech")
    evaluate.add_argument("--audio", type=Path, help="speech for the sync measures (default: the video's)")
    evaluate.add_argument("--json", type=Path, dest="json_out", help="write the report as JSON here")
    evaluate.add_argument("--slices", type=Path, help="write the jitter slices (PNG) here")
    add_tracker_arguments(evaluate)
    evaluate.add_argument(
        "--syncnet-weights", type=Path, help="SyncNet weights (state dict) for LSE-C/LSE-D; skipped without"
    )
    evaluate.add_argument("--overwrite", action="store_true", help="replace existing --json/--slices files")
    evaluate.set_defaults(handler=_cmd_eval)

    ablate = sub.add_parser(
        "ablate",
        epilog="example: stableface ablate my_avatar_ds --out ablation --preset small",
        help="train the Table V variants on a dataset and compare them on its held-out tail",
        description="Train (or take, when OUT already holds them) the full model and the five variants of "
        "the paper's Table V (without audio fusion / adaptive smoothing / augmented erosion / dependency "
        "modelling / all four), render the held-out tail of the video with each, measure them against the "
        "real tail, and write Table V (Markdown, CSV, bar plot) and a blind MOS study kit into OUT.",
    )
    ablate.add_argument("dataset", type=Path, help="dataset folder from stableface prepare")
    ablate.add_argument("--out", type=Path, required=True, help="output folder (models, renders, table)")
    ablate.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default=default_of(TrainSettings, "preset"),
        help="model size (default %(default)s)",
    )
    length = ablate.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="optimiser steps per training stage")
    length.add_argument("--epochs", type=positive_float, help="passes over the training data per stage")
    ablate.add_argument(
        "--batch-size",
        type=positive_int,
        default=default_of(TrainSettings, "batch_size"),
        help="sequences per step (default %(default)s)",
    )
    ablate.add_argument(
        "--device",
        default=default_of(TrainSettings, "device"),
        help="cpu, cuda or cuda:N (default %(default)s)",
    )
    ablate.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="train every variant once per seed (default 0)"
    )
    ablate.add_argument("--variants", nargs="+", help="only these variants (default: all six)")
    ablate.add_argument("--vgg-weights", type=Path, help="VGG19 weights for the perceptual loss")
    add_tracker_arguments(ablate)
    ablate.add_argument("--syncnet-weights", type=Path, help="SyncNet weights: the sync column becomes LSE-C")
    ablate.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    ablate.set_defaults(handler=_cmd_ablate)


def add_tracker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracker", choices=["face-alignment", "onnx68", "mediapipe"], help=TRACKER_HELP)
    parser.add_argument("--tracker-model", type=Path, help="the 68-point ONNX model for --tracker onnx68")


def tracker_from(args: argparse.Namespace) -> Any:
    """The tracker the arguments ask for: the MediaPipe mesh by default (the default install has
    it), a 68-point ONNX model when one is given."""
    from engines.geometry.trackers import create_tracker

    name = args.tracker or ("onnx68" if args.tracker_model is not None else "mediapipe")
    if args.tracker_model is not None and name != "onnx68":
        raise InputError("--tracker-model is for --tracker onnx68")
    return create_tracker(name, args.tracker_model)


def _check_outputs(args: argparse.Namespace, *paths: Path | None) -> None:
    for path in paths:
        if path is None:
            continue
        if path.exists() and not args.overwrite:
            raise OutputError(f"{path}: already exists; pass --overwrite to replace it")
        if not path.parent.is_dir():
            raise OutputError(f"{path.parent}: no such folder")


def _cmd_eval(args: argparse.Namespace) -> int:
    from offline_training.evaluation.video_report import evaluate_video

    for path in (args.video, args.reference, args.audio, args.syncnet_weights):
        if path is not None and not path.is_file():
            raise InputError(f"{path}: no such file")
    _check_outputs(args, args.json_out, args.slices)
    tracker = tracker_from(args)
    try:
        report = evaluate_video(
            args.video,
            tracker,
            reference=args.reference,
            audio=args.audio,
            syncnet_weights=args.syncnet_weights,
            slices=args.slices,
        )
    finally:
        tracker.close()
    print(report.table())
    if args.syncnet_weights is None:
        print("LSE-C/LSE-D: skipped (no --syncnet-weights given)")
    if args.json_out is not None:
        _write_json(args.json_out, report.to_json())
        print(f"json: {args.json_out}")
    if args.slices is not None:
        print(f"slices: {args.slices}")
    return 0


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from engines.files import atomic_output

    with atomic_output(path) as partial:
        partial.write_text(json.dumps(data, indent=2) + "\n")


def _cmd_ablate(args: argparse.Namespace) -> int:
    from offline_training.evaluation.ablation import TrainingPlan, variants_named
    from offline_training.evaluation.ablation_report import run_ablation

    if not args.dataset.is_dir():
        raise InputError(f"{args.dataset}: no such dataset folder")
    plan = TrainingPlan(
        preset=args.preset,
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        vgg_weights=args.vgg_weights,
        show_progress=not args.quiet,
    )
    variants = variants_named(args.variants)
    syncnet = None
    if args.syncnet_weights is not None:
        from offline_training.evaluation.syncnet import load_syncnet

        syncnet = (str(args.syncnet_weights), load_syncnet(args.syncnet_weights))
    tracker = tracker_from(args)
    try:
        result = run_ablation(
            args.dataset, args.out, variants, plan, sorted(set(args.seeds)), tracker, syncnet
        )
    finally:
        tracker.close()
    print(result.markdown)
    for path in result.files:
        print(f"wrote {path}")
    return 0
