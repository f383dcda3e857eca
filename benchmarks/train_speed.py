"""Training speed per preset and FLOPs per rendered frame.

For each preset, times full renderer training steps (renderer + adaptive smoothing forward and
backward, MS-SSIM perceptual term, PatchGAN discriminator step) on random inputs of the preset's
shape, as ``stableface train`` runs them on the device (on CUDA: bfloat16 autocast, channels-last
weights, the GPU batch of :data:`offline_training.train.settings.GPU_BATCH`; on a CPU batch 2), and
reports step time p50/p95/p99 and training frames per second; counts the FLOPs of one
rendered frame (renderer forward over a window of T frames, divided by T) and of the
audio-to-expression model with ``torch.utils.flop_counter`` on the meta device (no compute).
With ``--dataset DS --budget 15m`` it also trains each timed preset on that dataset with
``stableface train --budget`` and reports time-to-quality: when the validation SSIM first
reached 0.90, 0.92 and 0.94, and the run's final SSIM, mouth-landmark distance and held-out-tail
MSI ratios. ``--from-run AVATAR`` reads the same from a finished training run instead.
Writes ``results/train_speed-<date>.json`` and ``.md``.

    python benchmarks/train_speed.py [--presets tiny small paper] [--steps 5] [--device cpu] [--quick]
    python benchmarks/train_speed.py --presets paper --dataset DS --budget 15m --device cuda
    python benchmarks/train_speed.py --from-run AVATAR
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from engines.nets import PRESETS, AdaptiveSmoothing, AudioToExpression, Renderer
from offline_training.train.discriminator import PatchDiscriminator
from offline_training.train.losses import (
    discriminator_loss,
    generator_adversarial_loss,
    masked_l1,
    ms_ssim,
)
from offline_training.train.settings import resolved_batch_size
from stableface.argtypes import duration


def flops_per_frame(preset: str) -> dict[str, float]:
    """GFLOPs of one rendered frame and of one audio-to-expression frame, counted on meta tensors."""
    from torch.utils.flop_counter import FlopCounterMode

    config = PRESETS[preset]
    frames, size = config.sequence_length, config.renderer.image_size
    with torch.device("meta"):
        renderer = Renderer(config.renderer)
        audio_model = AudioToExpression(config.audio)
        inputs = (
            torch.empty(1, frames, 3, size, size),
            torch.empty(1, frames, 4, size, size),
            torch.empty(1, frames, config.renderer.audio_dim),
        )
        audio = torch.empty(1, 100, config.audio.features_per_frame * config.audio.n_mels)
        with FlopCounterMode(display=False) as counter:
            renderer(*inputs)
        render_flops = counter.get_total_flops() / frames
        with FlopCounterMode(display=False) as counter:
            audio_model(audio)
        audio_flops = counter.get_total_flops() / 100
    params = sum(p.numel() for p in Renderer(config.renderer).parameters()) if preset != "paper" else None
    return {
        "renderer_gflop_per_frame": render_flops / 1e9,
        "audio2expression_gflop_per_frame": audio_flops / 1e9,
        "renderer_params_m": (params / 1e6) if params is not None else _paper_params() / 1e6,
    }


def _paper_params() -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in Renderer(PRESETS["paper"].renderer).parameters())


def time_training(preset: str, steps: int, device: torch.device, batch: int | None = None) -> dict[str, Any]:
    """Step times of renderer training at the batch ``train`` would use on ``device``."""
    config = PRESETS[preset]
    batch = resolved_batch_size(batch, preset, device.type)
    frames, size = config.sequence_length, config.renderer.image_size
    torch.manual_seed(0)
    renderer = Renderer(config.renderer).to(device)
    smoothing = AdaptiveSmoothing(config.smoothing, config.audio.mouth_dims, config.audio.lookahead_frames)
    smoothing = smoothing.to(device)
    discriminator = PatchDiscriminator(32, 3).to(device)
    if device.type == "cuda":
        renderer.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        discriminator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    g_opt = torch.optim.Adam([*renderer.parameters(), *smoothing.parameters()], lr=1e-4)
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=1e-4)
    eroded = torch.rand(batch, frames, 3, size, size, device=device) * 2 - 1
    shapes = torch.rand(batch, frames, 4, size, size, device=device)
    audio = torch.randn(batch, frames, config.renderer.audio_dim, device=device)
    params = torch.randn(batch, frames, config.audio.mouth_dims, device=device)
    target = torch.rand(batch, frames, 3, size, size, device=device) * 2 - 1
    weights = torch.ones(batch, frames, 1, size, size, device=device)
    times = []
    for step in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            prediction = renderer(eroded, smoothing(shapes, params), audio).float()
        flat, flat_target = prediction.flatten(0, 1), target.flatten(0, 1)
        loss = 20 * (
            masked_l1(prediction, target, weights) + 1 - ms_ssim((flat + 1) / 2, (flat_target + 1) / 2)
        )
        loss = loss + generator_adversarial_loss(discriminator(flat))
        g_opt.zero_grad()
        torch.autograd.backward(loss)
        g_opt.step()
        d_opt.zero_grad()
        real, fake = discriminator(torch.cat([flat_target, flat.detach()])).chunk(2)
        torch.autograd.backward(discriminator_loss(real, fake))
        d_opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    step_ms = common.percentiles([1000 * t for t in times])
    return {
        "batch": batch,
        "frames_per_step": batch * frames,
        "steps_timed": len(times),
        "step_ms": step_ms,
        "train_frames_per_s_p50": batch * frames / (step_ms["p50"] / 1000),
    }


SSIM_MARKS = (0.90, 0.92, 0.94)


def quality_of_run(avatar: Path) -> dict[str, Any]:
    """Time-to-quality of a finished ``train`` run: seconds until the validation SSIM first reached
    each of ``SSIM_MARKS`` (None: never), and the run's final report.

    Times are the run's own ``elapsed_s`` (budgeted runs); for older runs, TensorBoard's wall
    times from the first logged value (a second or so after the start).
    """
    import json

    training = avatar / "training"
    lines = [json.loads(line) for line in (training / "metrics.jsonl").read_text().splitlines()]
    ssim = [(line.get("elapsed_s"), line["val/ssim"]) for line in lines if "val/ssim" in line]
    if ssim and ssim[0][0] is None:
        ssim = list(
            zip(_tensorboard_seconds(training / "logs", "val/ssim"), [v for _, v in ssim], strict=False)
        )
    report = json.loads((training / "report.json").read_text())
    reached = {
        f"{mark:.2f}": next((float(t) for t, value in ssim if value >= mark and t is not None), None)
        for mark in SSIM_MARKS
    }
    return {
        "avatar": str(avatar),
        "seconds_to_ssim": reached,
        "elapsed_s": report.get("elapsed_s"),
        "budget_s": report.get("budget_s"),
        "steps": report["steps"],
        "final": report["validation"],
    }


def _tensorboard_seconds(logs: Path, tag: str) -> list[float]:
    """Seconds since the first logged scalar of each ``tag`` value, from TensorBoard's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logs), size_guidance={"scalars": 0})
    events.Reload()
    first = min(events.Scalars(name)[0].wall_time for name in events.Tags()["scalars"])
    return [event.wall_time - first for event in events.Scalars(tag)]


def train_for_quality(preset: str, dataset: Path, budget_s: float, device: str, out: Path) -> dict[str, Any]:
    """Train ``preset`` on ``dataset`` for ``budget_s`` with ``train --budget``; its time-to-quality."""
    from offline_training.train.settings import TrainSettings
    from offline_training.train.trainer import Trainer

    avatar = out / f"{preset}-avatar"
    settings = TrainSettings(
        dataset=dataset, out=avatar, preset=preset, budget_s=budget_s, device=device, overwrite=True
    )
    Trainer(settings).run()
    return quality_of_run(avatar)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# training speed — {result['date']}",
        "",
        f"Machine: {result['machine']['processor']} ({result['machine']['cpus']} CPUs, torch "
        f"{result['machine']['torch']}, {result['machine']['torch_threads']} threads), "
        f"device {result['device']}, commit {result['commit']}.",
        "",
    ]
    columns = ["preset", "renderer GFLOP/frame", "a2e GFLOP/frame", "renderer params (M)", "step ms p50"]
    columns += ["p95", "p99", "train frames/s"]
    cells = []
    for preset, row in result["presets"].items():
        if "flops" not in row:  # a finished run read with --from-run
            continue
        flops, timing = row["flops"], row.get("training")
        timed = [f"{timing['step_ms'][q]:.0f}" for q in ("p50", "p95", "p99")] if timing else ["—"] * 3
        cells.append(
            [
                preset,
                f"{flops['renderer_gflop_per_frame']:.2f}",
                f"{flops['audio2expression_gflop_per_frame']:.4f}",
                f"{flops['renderer_params_m']:.1f}",
                *timed,
                f"{timing['train_frames_per_s_p50']:.1f}" if timing else "—",
            ]
        )
    if cells:
        lines += common.markdown_table(columns, "lrrrrrrr", cells)
    runs = {name: row["quality"] for name, row in result["presets"].items() if "quality" in row}
    if runs:
        lines += ["", "## Time to quality", ""]
        quality_columns = ["run", *(f"s to SSIM {mark:.2f}" for mark in SSIM_MARKS), "final SSIM"]
        quality_columns += ["mouth distance", "MSI lip ratio", "MSI jaw ratio", "elapsed s"]
        rows = []
        for name, run in runs.items():
            final = run["final"]
            rows.append(
                [
                    name,
                    *("—" if t is None else f"{t:.0f}" for t in run["seconds_to_ssim"].values()),
                    f"{final.get('val/ssim', float('nan')):.4f}",
                    f"{final.get('val/mouth_landmark_distance', float('nan')):.4f}",
                    f"{final.get('tail/mediapipe/msi_lip_ratio', float('nan')):.2f}",
                    f"{final.get('tail/mediapipe/msi_jaw_ratio', float('nan')):.2f}",
                    "—" if run["elapsed_s"] is None else f"{run['elapsed_s']:.0f}",
                ]
            )
        lines += common.markdown_table(quality_columns, "lrrrrrrrr", rows)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"], choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per preset (after one warm-up)")
    parser.add_argument(
        "--time-presets", nargs="+", help="presets to time (default: all given; FLOPs for all)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="sequences per step (default: as train on the device)")
    parser.add_argument("--quick", action="store_true", help="FLOPs of every preset, 2 timed tiny steps")
    parser.add_argument(
        "--dataset", type=Path, help="train each timed preset on it for --budget (time to quality)"
    )
    parser.add_argument(
        "--budget", type=duration, default=900.0, help="training budget per preset (default 15m)"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/train_speed"), help="where the avatars go")
    parser.add_argument("--from-run", type=Path, nargs="+", help="finished training runs to read instead")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    timed = ["tiny"] if args.quick else (args.time_presets or args.presets)
    steps = 2 if args.quick else args.steps
    presets: dict[str, Any] = {}
    if args.from_run:
        for avatar in args.from_run:
            presets[avatar.name] = {"quality": quality_of_run(avatar)}
        common.report("train_speed", args, markdown, device=str(device), presets=presets)
        return 0
    for preset in args.presets:
        row: dict[str, Any] = {"flops": flops_per_frame(preset)}
        if preset in timed:
            row["training"] = time_training(preset, steps, device, args.batch)
            if args.dataset is not None:
                row["quality"] = train_for_quality(preset, args.dataset, args.budget, str(device), args.work)
        presets[preset] = row
        print(f"{preset}: {row}", flush=True)
    common.report("train_speed", args, markdown, device=str(device), presets=presets)
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
