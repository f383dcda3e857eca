"""``stableface <command>``: the command line of the engine.

Errors meant for the user (:class:`engines.errors.StableFaceError`) print one line on stderr and
exit with status 1; usage errors exit with 2; Ctrl-C exits with 130. Nothing else here prints a
traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engines.errors import StableFaceError
from offline_training.dataset.settings import PrepareSettings
from offline_training.train.settings import TrainSettings
from stableface.argtypes import (
    PRESET_NAMES,
    avatar_folder,
    default_of,
    duration,
    positive_float,
    positive_int,
    validated,
)
from stableface.bench_command import add_bench_parser
from stableface.build_default_command import add_build_default_parser
from stableface.eval_command import add_eval_parsers
from stableface.live_commands import NO_AI_MARK_HELP, add_live_parser, add_serve_parser
from stableface.pipecat_command import add_pipecat_demo_parser

STARTED = time.monotonic()  # a --budget counts the command's own start-up

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from engines.bundle import AvatarBundle

    FloatArray = npt.NDArray[np.float32]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]


def _cmd_prepare(args: argparse.Namespace) -> int:
    from offline_training.dataset.builder import manifest_summary, prepare_dataset

    settings = validated(
        PrepareSettings,
        {"video": "VIDEO", "render_size": "--size"},
        video=args.video,
        out=args.out,
        audio=args.audio,
        render_size=args.size,
        tracker=args.tracker,
        tracker_model=args.tracker_model,
        overwrite=args.overwrite,
        mouth_dims=args.mouth_dims,
        upper_dims=args.upper_dims,
        pose_steadying=args.pose_steadying,
        show_progress=not args.quiet,
    )
    report = prepare_dataset(settings)
    manifest = report.manifest
    print(f"dataset: {report.out}")
    print(
        f"  {manifest.num_frames} frames kept of {manifest.num_source_frames} at 25 fps "
        f"({len(manifest.dropped_frames)} without a face), {manifest.trim.used_duration_s:.2f} s"
    )
    print(
        f"  face model: {manifest.face_model.mouth_dims} mouth + {manifest.face_model.upper_dims} upper-face "
        f"parameters explain {manifest.face_model.explained_variance:.1%} of shape variance"
    )
    print(f"  {report.frames_per_second:.1f} frames/s")
    logging.getLogger(__name__).debug("summary %s", manifest_summary(manifest))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from offline_training.train.trainer import Trainer

    settings = validated(
        TrainSettings,
        {"dataset": "DATASET", "budget_s": "--budget"},
        dataset=args.dataset,
        out=args.out,
        preset=args.preset,
        stage=args.stage,
        steps=args.steps,
        epochs=args.epochs,
        budget_s=args.budget,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        batch_size=args.batch_size,
        vgg_weights=args.vgg_weights,
        val_every=args.val_every,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        audio_fusion=not args.no_audio_fusion,
        smoothing=not args.no_smoothing,
        erosion=not args.no_erosion,
        reference_frames=args.reference_frames,
        dependency=not args.no_dependency,
        show_progress=not args.quiet,
        stability_report=not args.no_stability_report,
        tracker_model=args.tracker_model,
        compile=args.compile,
        voice_augmentation=not args.no_voice_augmentation,
    )
    if settings.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise StableFaceError("--device cuda: no CUDA device is available (torch sees none)")
    report = Trainer(settings, spent_s=time.monotonic() - STARTED).run()
    print(f"avatar: {report.out}")
    print("  steps: " + ", ".join(f"{stage} {count}" for stage, count in report.steps.items()))
    if report.validation:
        print(
            "  validation: "
            + ", ".join(f"{k.removeprefix('val/')} {v:.4f}" for k, v in report.validation.items())
        )
    print(f"  {report.seconds:.0f} s")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from engines.bundle import AvatarBundle
    from engines.files import atomic_output
    from engines.media.decode import load_audio
    from engines.media.encode import write_mp4
    from engines.offline_render import render_frames

    if args.out.exists() and not args.overwrite:
        raise StableFaceError(f"{args.out}: already exists; pass --overwrite to replace it")
    if not args.out.parent.is_dir():
        raise StableFaceError(f"{args.out.parent}: no such folder")
    bundle = AvatarBundle.load(args.avatar, device=args.device)
    audio = load_audio(args.audio, bundle.manifest.sample_rate_hz)
    if len(audio) == 0 or not np.isfinite(audio).all():
        raise StableFaceError(f"{args.audio}: no usable audio samples")
    frames = int(np.ceil(len(audio) * bundle.manifest.fps / bundle.manifest.sample_rate_hz))
    if args.causal:
        if args.crop_only:
            raise StableFaceError("--crop-only is for the offline path; --causal renders full frames")
        return _render_causal(args, bundle, audio, frames)
    with (
        atomic_output(args.out) as partial,
        tqdm(total=frames, desc="render", unit="frame", disable=args.quiet, leave=False) as bar,
    ):
        count = write_mp4(
            partial,
            render_frames(
                bundle, audio, paste=not args.crop_only, progress=bar.update, ai_mark=not args.no_ai_mark
            ),
            bundle.manifest.fps,
            audio,
            bundle.manifest.sample_rate_hz,
        )
    print(f"video: {args.out} ({count} frames, {count / bundle.manifest.fps:.2f} s, with audio)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from engines.backends import StreamShape, TorchBackend, onnx_export_dir
    from engines.backends.onnx_export import ensure_onnx_export, export_onnx, read_export
    from engines.backends.onnxruntime_backend import OnnxRuntimeBackend
    from engines.backends.parity import max_differences
    from engines.bundle import AvatarBundle

    if args.backend != "tensorrt" and args.precision != "fp32":
        raise StableFaceError(
            "ONNX exports are fp32 (the portable form); fp16 is TensorRT's build precision: "
            "use --backend tensorrt --precision fp16"
        )
    bundle = AvatarBundle.load(args.avatar)
    shape = StreamShape.for_config(bundle.config, args.chunk, args.past, args.max_batch)
    folder = onnx_export_dir(bundle.root, shape)
    if args.backend != "tensorrt" and folder.exists() and not args.overwrite:
        manifest = read_export(folder)
        if manifest.shape != shape.to_dict():
            raise StableFaceError(f"{folder}: exists with other shapes; pass --overwrite to replace it")
        ensure_onnx_export(bundle.networks, shape, folder)
        print(f"onnx export: {folder} (up to date)")
    elif args.backend != "tensorrt":
        export_onnx(bundle.networks, shape, folder, overwrite=args.overwrite)
        print(f"onnx export: {folder}")
    else:
        ensure_onnx_export(bundle.networks, shape, folder)
    print(
        f"  chunk {shape.chunk_frames} + {shape.past_frames} past frames, audio window "
        f"{shape.audio_frames}, smoothing window {shape.smoothing_frames}, batch 1..{shape.max_batch}"
    )
    with TorchBackend(bundle.networks, shape) as reference, OnnxRuntimeBackend(folder) as onnx:
        differences = max_differences(reference, onnx)
    print(
        "  onnxruntime vs torch, max |difference|: "
        + ", ".join(f"{k} {v:.2e}" for k, v in differences.items())
    )
    if args.backend == "tensorrt":
        from engines.backends.tensorrt_backend import TensorRTBackend

        with TensorRTBackend(folder, args.precision) as engine:
            for name, plan in engine.plans.items():
                print(f"  tensorrt {args.precision} engine {name}: {plan}")
    return 0


def _render_causal(args: argparse.Namespace, bundle: AvatarBundle, audio: FloatArray, frames: int) -> int:
    from tqdm import tqdm

    from engines.backends import StreamShape, load_backend
    from engines.files import atomic_output
    from engines.media.encode import write_mp4
    from realtime.engine import AvatarEngine
    from realtime.file_stream import stream_file
    from realtime.settings import StreamSettings

    settings = StreamSettings(chunk_frames=args.chunk, ai_mark=not args.no_ai_mark)
    shape = StreamShape.for_config(bundle.config, chunk_frames=args.chunk)
    engine = AvatarEngine(bundle, load_backend(bundle, args.backend, shape), settings)
    try:
        with (
            atomic_output(args.out) as partial,
            tqdm(total=frames, desc="render (causal)", unit="frame", disable=args.quiet, leave=False) as bar,
        ):
            images = (
                frame.image for frame in stream_file(engine, audio, bar.update) if frame.image is not None
            )
            count = write_mp4(partial, images, bundle.manifest.fps, audio, bundle.manifest.sample_rate_hz)
    finally:
        engine.close()
    print(f"video: {args.out} ({count} frames, causal streaming path, {engine.backend.name} backend)")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from offline_training.synthetic import generate_talking_face, write_talking_face

    if args.out.exists() and not args.overwrite:
        raise StableFaceError(f"{args.out}: already exists; pass --overwrite to replace it")
    clip = generate_talking_face(seed=args.seed, duration_s=args.seconds, size=args.size)
    write_talking_face(args.out, clip, audio_path=args.audio_out)
    print(
        f"synthetic talking face: {args.out} "
        f"({len(clip.frames)} frames, {args.seconds:g} s, seed {args.seed})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stableface",
        description="Real-time talking-avatar engine (StableFace). Turn a talking-head video into an "
        "avatar, then drive it live with speech.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    prepare = sub.add_parser(
        "prepare",
        epilog="example: stableface prepare me_talking.mp4 --out my_avatar_ds",
        help="build an avatar dataset from a talking-head video",
        description="Decode a talking-head video (25 fps, 16 kHz mono), track the face in every frame, fit "
        "the per-avatar face model and write crops, face-shape images, mouth masks and log-mel features "
        "into a dataset folder with a versioned manifest.json. The folder appears only when complete.",
    )
    prepare.add_argument("video", type=Path, help="the talking-head video (any format FFmpeg reads)")
    prepare.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    prepare.add_argument(
        "--audio", type=Path, help="speech as a separate file, for videos without an audio track"
    )
    prepare.add_argument(
        "--size",
        type=positive_int,
        default=default_of(PrepareSettings, "render_size"),
        help="crop side in pixels (default %(default)s)",
    )
    prepare.add_argument(
        "--tracker",
        choices=["mediapipe", "face-alignment", "onnx68"],
        default=default_of(PrepareSettings, "tracker"),
        help="landmark tracker (default %(default)s; mediapipe: 478 points, needs no download)",
    )
    prepare.add_argument("--tracker-model", type=Path, help="the 68-point ONNX model for --tracker onnx68")
    prepare.add_argument(
        "--mouth-dims",
        type=positive_int,
        default=default_of(PrepareSettings, "mouth_dims"),
        help="mouth parameters (default %(default)s)",
    )
    prepare.add_argument(
        "--upper-dims",
        type=positive_int,
        default=default_of(PrepareSettings, "upper_dims"),
        help="upper-face parameters (default %(default)s)",
    )
    prepare.add_argument(
        "--pose-steadying",
        type=float,
        default=default_of(PrepareSettings, "pose_steadying"),
        metavar="FRAMES",
        help="sigma in frames of the filter that takes the tracker's noise out of the head pose, 0 for none "
        "(default %(default)s)",
    )
    prepare.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    prepare.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    prepare.set_defaults(handler=_cmd_prepare)

    train = sub.add_parser(
        "train",
        epilog="example: stableface train my_avatar_ds --out my_avatar --preset small",
        help="train an avatar from a dataset made by prepare",
        description="Train the audio-to-expression model, the StableFace renderer and adaptive smoothing "
        "on a dataset from `stableface prepare`, validating on the held-out last 20%% of the video, and "
        "write a self-contained avatar bundle to --out (checkpoints, TensorBoard logs and samples go "
        "to OUT/training). Run several processes with torchrun for DistributedDataParallel.",
    )
    train.add_argument("dataset", type=Path, help="dataset folder from stableface prepare")
    train.add_argument("--out", type=Path, required=True, help="avatar folder to write")
    train.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default=default_of(TrainSettings, "preset"),
        help="model size (default %(default)s)",
    )
    train.add_argument(
        "--stage",
        choices=["a2e", "renderer", "joint", "all"],
        default=default_of(TrainSettings, "stage"),
        help="what to train (default %(default)s)",
    )
    length = train.add_mutually_exclusive_group()
    length.add_argument(
        "--steps", type=positive_int, help="optimiser steps per stage (joint: a fifth with --stage all)"
    )
    length.add_argument("--epochs", type=positive_float, help="passes over the training sequences per stage")
    length.add_argument(
        "--budget",
        type=duration,
        help="train for this long in all (e.g. 20m, 1h30m), export included: the stages share the "
        "time, each stops early on a validation plateau and keeps its best validated weights",
    )
    train.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in OUT/training"
    )
    train.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    train.add_argument(
        "--device",
        default=default_of(TrainSettings, "device"),
        help="cpu, cuda or cuda:N (default %(default)s)",
    )
    train.add_argument(
        "--batch-size",
        type=positive_int,
        help="sequences per step (default 2 on a CPU; on a GPU 8 for paper, 16 for small, 32 for the others)",
    )
    train.add_argument(
        "--vgg-weights", type=Path, help="VGG19 weights for the perceptual loss (.pth or .safetensors)"
    )
    train.add_argument(
        "--val-every",
        type=positive_int,
        default=default_of(TrainSettings, "val_every"),
        help="validate every N steps (default %(default)s)",
    )
    train.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=default_of(TrainSettings, "checkpoint_every"),
        help="checkpoint every N steps (default %(default)s)",
    )
    train.add_argument(
        "--seed",
        type=int,
        default=default_of(TrainSettings, "seed"),
        help="random seed (default %(default)s)",
    )
    train.add_argument(
        "--no-audio-fusion", action="store_true", help="ablation: renderer without audio fusion"
    )
    train.add_argument("--no-smoothing", action="store_true", help="ablation: no adaptive smoothing")
    train.add_argument("--no-erosion", action="store_true", help="ablation: no augmented erosion")
    train.add_argument("--no-dependency", action="store_true", help="ablation: no dependency modelling")
    train.add_argument(
        "--reference-frames",
        type=positive_int,
        help="keep only the first N frames as the reference video the avatar plays (smaller bundle)",
    )
    train.add_argument(
        "--tracker-model",
        type=Path,
        help="a 68-point ONNX landmark model: the final stability report reads MSI with it too",
    )
    train.add_argument(
        "--no-stability-report",
        action="store_true",
        help="skip the final MSI of the rendered held-out tail beside the real one",
    )
    train.add_argument(
        "--no-voice-augmentation",
        action="store_true",
        help="train audio-to-expression on the speaker's own recording only (by default also on changed "
        "copies of it: speed, room, channel, phone codec, noise, babble, so the mouth follows other voices)",
    )
    train.add_argument(
        "--compile", action="store_true", help="torch.compile the networks (pays on a GPU for long runs)"
    )
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=_cmd_train)

    render = sub.add_parser(
        "render",
        epilog="example: stableface render default speech.wav --out talking.mp4",
        help="render a speech file with an avatar into an MP4",
        description="Drive an avatar with a whole speech file offline (centred adaptive smoothing) and write "
        "an H.264 + AAC MP4 with the speech as its sound track.",
    )
    render.add_argument(
        "avatar", type=avatar_folder, help="avatar folder from stableface train, or default (the bundled one)"
    )
    render.add_argument("audio", type=Path, help="speech (any format FFmpeg reads)")
    render.add_argument("--out", type=Path, required=True, help="MP4 file to write")
    render.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    render.add_argument(
        "--crop-only", action="store_true", help="write the rendered face crop, not the full frame"
    )
    render.add_argument(
        "--causal",
        action="store_true",
        help="render through the live streaming pipeline (causal smoothing, chunks, voice gate)",
    )
    render.add_argument("--chunk", type=positive_int, help="--causal: frames per chunk (default: avatar's)")
    render.add_argument("--backend", default="auto", help="--causal: inference backend (default auto)")
    render.add_argument("--no-ai-mark", action="store_true", help=NO_AI_MARK_HELP)
    render.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    render.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    render.set_defaults(handler=_cmd_render)

    export = sub.add_parser(
        "export",
        epilog="example: stableface export my_avatar --backend onnxruntime-cpu",
        help="export an avatar's networks for ONNX Runtime or TensorRT",
        description="Export the avatar's streaming graphs (audio-to-expression, causal smoothing weights, "
        "renderer chunk with its cached past frames) to ONNX beside the bundle, in AVATAR/engines/, with a "
        "manifest of hashes, shapes and versions, and check ONNX Runtime against torch on random inputs. "
        "With --backend tensorrt also build (and cache) the TensorRT engines; that needs TensorRT 10+ "
        "and an NVIDIA GPU.",
    )
    export.add_argument(
        "avatar", type=avatar_folder, help="avatar folder from stableface train, or default (the bundled one)"
    )
    export.add_argument(
        "--backend",
        choices=["onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"],
        default="onnxruntime-cpu",
        help="the backend to export for: the ONNX graphs, and for tensorrt its engines too "
        "(default onnxruntime-cpu)",
    )
    export.add_argument(
        "--precision", choices=["fp32", "fp16"], default="fp32", help="fp16: TensorRT only (default fp32)"
    )
    export.add_argument("--chunk", type=positive_int, help="new frames per renderer call (default: avatar's)")
    export.add_argument("--past", type=int, help="cached past frames per call (default: window - chunk)")
    export.add_argument("--max-batch", type=positive_int, help="most sessions per call (default 1)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing export")
    export.set_defaults(handler=_cmd_export)

    synth = sub.add_parser(
        "synth",
        epilog="example: stableface synth --out face.mp4 --seconds 8",
        help="generate a synthetic talking-face video (for tests and demos)",
        description="Animate the public-domain astronaut portrait shipped with scikit-image so that its "
        "mouth follows generated speech-like audio. Deterministic from --seed.",
    )
    synth.add_argument("--out", type=Path, required=True, help="MP4 file to write")
    synth.add_argument("--seconds", type=positive_float, default=8.0, help="duration (default 8)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--size", type=positive_int, default=256, help="frame side in pixels (default 256)")
    synth.add_argument("--audio-out", type=Path, help="write the audio to this WAV instead of into the MP4")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    synth.set_defaults(handler=_cmd_synth)
    add_serve_parser(sub)
    add_live_parser(sub)
    add_bench_parser(sub)
    add_build_default_parser(sub)
    add_eval_parsers(sub)
    add_pipecat_demo_parser(sub)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("GLOG_minloglevel", "2")
    handler: Handler = args.handler
    try:
        return handler(args)
    except StableFaceError as exc:
        if args.debug:
            raise
        print(f"stableface {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"stableface {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        first_line = (str(exc).splitlines() or [""])[0]
        print(
            f"stableface {args.command}: internal error: {type(exc).__name__}: {first_line} "
            "(rerun with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_ERROR
