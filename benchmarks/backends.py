"""Inference speed per backend, preset and chunk size.

For each preset (random weights of the preset's shapes; speed does not depend on the values), each
chunk size C (with P = window - C past frames) and each backend this machine can run, times the
renderer chunk call (``Backend.run``) and the per-chunk audio-to-expression and smoothing calls,
and reports ms per chunk p50/p95/p99, frames/s (C / p50) and, from the FLOPs of one chunk counted
with ``torch.utils.flop_counter``, the achieved GFLOP/s and, on a GPU with a known peak, the FLOP
utilisation. Writes ``results/backends-<date>.json``, ``.md`` and ``.png``.

    python benchmarks/backends.py [--presets tiny small] [--chunks 1 2 4 8]
        [--backends torch-cpu onnxruntime-cpu ...] [--iterations 50] [--quick]

On a GPU add ``--backends torch-cuda torch-cuda-compiled torch-cuda-graphs onnxruntime-cuda``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks.ceiling import measure_peak
from engines.backends import StreamShape, TorchBackend, available_backends, load_networks_backend
from engines.backends.base import Backend
from engines.backends.graphs import RendererChunk
from engines.backends.parity import random_inputs
from engines.bundle import build_networks
from engines.nets import PRESETS, Renderer
from engines.timebase import FPS

# Dense peak FLOP/s by GPU name fragment and precision (NVIDIA data sheets, SXM parts, no sparsity).
GPU_PEAK_TFLOPS = {
    "H100": {"fp32": 67.0, "fp16": 989.0, "bf16": 989.0},
    "H200": {"fp32": 67.0, "fp16": 989.0, "bf16": 989.0},
    "A100": {"fp32": 19.5, "fp16": 312.0, "bf16": 312.0},
}
GPU_VARIANTS = {
    "torch-cuda-compiled": {"compile": True},
    "torch-cuda-graphs": {"cuda_graphs": True},
    "torch-cuda-compiled-graphs": {"compile": True, "cuda_graphs": True},
}


def chunk_gflop(preset: str, shape: StreamShape) -> float:
    """GFLOPs of one renderer chunk call (C new frames over a P + C window), counted on meta tensors."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        module = RendererChunk(Renderer(PRESETS[preset].renderer), shape)
        inputs = [torch.empty(size) for size in shape.renderer_inputs(1).values()]
        with FlopCounterMode(display=False) as counter:
            module(*inputs)
    return counter.get_total_flops() / 1e9


def load(name: str, preset: str, shape: StreamShape, export_root: Path) -> Backend:
    torch.manual_seed(0)
    networks = build_networks(PRESETS[preset])
    for module in (networks.audio2expression, networks.renderer, networks.smoothing):
        module.eval()
    if name in GPU_VARIANTS:
        return TorchBackend(networks, shape, "cuda", "fp16", **GPU_VARIANTS[name])  # type: ignore[arg-type]
    return load_networks_backend(name, networks, shape, export_root)  # type: ignore[arg-type]


def time_calls(backend: Backend, iterations: int, warmup: int) -> dict[str, Any]:
    audio, mouth, chunk = random_inputs(backend.shape, 1, seed=0)
    timings: dict[str, list[float]] = {"renderer": [], "audio2expression": [], "smoothing": []}
    calls = {
        "renderer": lambda: backend.run(chunk),
        "audio2expression": lambda: backend.expressions(audio),
        "smoothing": lambda: backend.smoothing_weights(mouth),
    }
    on_gpu = backend.device.type == "cuda"
    for step in range(warmup + iterations):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            if on_gpu:  # GPU backends return device tensors: the work may still be queued
                torch.cuda.synchronize(backend.device)
            if step >= warmup:
                timings[key].append(1000 * (time.perf_counter() - start))
    totals = [sum(values) for values in zip(*timings.values(), strict=True)]
    return {
        "renderer_ms": common.percentiles(timings["renderer"]),
        "audio2expression_ms": common.percentiles(timings["audio2expression"]),
        "smoothing_ms": common.percentiles(timings["smoothing"]),
        "chunk_total_ms": common.percentiles(totals),
    }


def gpu_peak(precision: str) -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for fragment, peaks in GPU_PEAK_TFLOPS.items():
        if fragment in name:
            return peaks[precision] * 1e12
    return None


def measure(args: argparse.Namespace, export_root: Path) -> list[dict[str, Any]]:
    rows = []
    # CPU rows are held against this machine's measured matmul peak (GPUs: their data sheets).
    cpu_peak = measure_peak("cpu", seconds=0.3 if args.quick else 2.0)["gflop_per_s_best"] * 1e9
    for preset in args.presets:
        for chunk in args.chunks:
            shape = StreamShape.for_config(PRESETS[preset], chunk_frames=chunk)
            gflop = chunk_gflop(preset, shape)
            for name in args.backends:
                backend = load(name, preset, shape, export_root / preset)
                try:
                    timing = time_calls(backend, args.iterations, args.warmup)
                    description = backend.describe()
                finally:
                    backend.close()
                p50_s = timing["chunk_total_ms"]["p50"] / 1000
                achieved = gflop * 1e9 / (timing["renderer_ms"]["p50"] / 1000)
                peak = (
                    gpu_peak(str(description.get("precision", "fp32")))
                    if "cuda" in name or name == "tensorrt"
                    else cpu_peak
                )
                row = {
                    "preset": preset,
                    "backend": name,
                    "chunk_frames": chunk,
                    "past_frames": shape.past_frames,
                    "renderer_gflop_per_chunk": gflop,
                    **timing,
                    "frames_per_s": chunk / p50_s,
                    "renderer_gflop_per_s": achieved / 1e9,
                    "flop_utilisation": achieved / peak if peak else None,
                    "backend_info": description,
                }
                rows.append(row)
                print(
                    f"{preset:6s} {name:26s} C={chunk} P={shape.past_frames}: chunk "
                    f"{common.percentile_text(timing['chunk_total_ms'], 1)} ms (p50/p95/p99), "
                    f"{row['frames_per_s']:.1f} frames/s",
                    flush=True,
                )
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# backend speed — {result['date']}",
        "",
        f"{common.machine_line(result)}, {result['iterations']} timed calls after {result['warmup']} "
        "warm-up calls. "
        "A chunk is one audio-to-expression call, one smoothing call and one renderer call; frames/s is "
        "C / (p50 of the whole chunk). FLOP utilisation: renderer GFLOP/s over the peak (CPU: measured "
        "with a large matmul, `benchmarks/ceiling.py`; GPU: data sheet).",
        "",
    ]
    columns = ["preset", "backend", "C", "P", "chunk ms p50", "p95", "p99", "renderer ms p50", "frames/s"]
    columns += ["renderer GFLOP/s", "FLOP utilisation"]
    cells = [
        [row["preset"], row["backend"], row["chunk_frames"], row["past_frames"]]
        + [f"{row['chunk_total_ms'][q]:.1f}" for q in ("p50", "p95", "p99")]
        + [
            f"{row['renderer_ms']['p50']:.1f}",
            f"{row['frames_per_s']:.1f}",
            f"{row['renderer_gflop_per_s']:.1f}",
        ]
        + [f"{100 * row['flop_utilisation']:.1f}%" if row["flop_utilisation"] else "—"]
        for row in result["rows"]
    ]
    return "\n".join(lines + common.markdown_table(columns, "llrrrrrrrrr", cells)) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    presets = sorted({row["preset"] for row in result["rows"]})
    with common.figure(path, 1, len(presets), figsize=(5 * len(presets), 4), squeeze=False) as axes:
        for axis, preset in zip(axes[0], presets, strict=True):
            rows = [row for row in result["rows"] if row["preset"] == preset]
            for name in sorted({row["backend"] for row in rows}):
                mine = sorted((r for r in rows if r["backend"] == name), key=lambda r: r["chunk_frames"])
                axis.plot(
                    [r["chunk_frames"] for r in mine],
                    [r["frames_per_s"] for r in mine],
                    marker="o",
                    label=name,
                )
            axis.axhline(FPS, color="grey", linestyle="--", linewidth=1, label="25 fps (real time)")
            axis.set(title=f"{preset} preset", xlabel="chunk size C (frames)", ylabel="frames/s (p50)")
            axis.set_xscale("log", base=2)
            axis.legend(fontsize=8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=sorted(PRESETS))
    parser.add_argument("--chunks", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--backends", nargs="+", help="default: every backend this machine can run")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny preset, chunk 2, CPU backends, few calls")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.chunks, args.iterations, args.warmup = ["tiny"], [2], 3, 1
        args.backends = args.backends or ["torch-cpu", "onnxruntime-cpu"]
    args.backends = args.backends or available_backends()
    with tempfile.TemporaryDirectory(prefix="stableface-bench-") as folder:
        rows = measure(args, Path(folder))
    common.report("backends", args, markdown, plot, iterations=args.iterations, warmup=args.warmup, rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
