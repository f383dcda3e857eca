"""The physical ceiling on rendered frames/s per preset: compute-bound and memory-bound.

For each preset and chunk size C (with P = window - C past frames), counts what one real-time chunk
costs per rendered frame — one audio-to-expression call, one smoothing call and one renderer call of
C new frames, all divided by C — on meta tensors (no weights, no data, instant): FLOPs with
``torch.utils.flop_counter`` and bytes of memory traffic under a no-reuse model (see
``frame_cost``). Then measures this machine's peaks — FLOP/s of a large square matmul and bytes/s of
a large copy — and bounds frames/s by each: the ceiling is the smaller bound. No backend can beat
it; ``benchmarks/throughput.py`` states achieved frames/s against it. Writes
``results/ceiling-<date>.json``, ``.md`` and ``.png``.

    python benchmarks/ceiling.py [--presets tiny small paper] [--chunks 1 2 4 8]
        [--device cpu|cuda] [--seconds 2] [--quick] [--results results]

On the CPU costs are fp32; on CUDA (``--device cuda``) fp16 (the smoothing network stays fp32, as in
the torch backend): the FLOPs are the same, the bytes about halve, the peaks are fp16 matmuls.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from engines.backends import StreamShape
from engines.backends.graphs import CausalSmoothingWeights, Expressions, RendererChunk
from engines.nets import PRESETS, AdaptiveSmoothing, AudioToExpression, Renderer
from engines.timebase import FPS

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class _Traffic(torch.utils._python_dispatch.TorchDispatchMode):
    """Sums, over every aten op that runs, the bytes of its tensor inputs and tensor outputs.

    Views (outputs aliasing an input: ``view``, ``t``, ``permute``, ``expand``, ...) and ``empty``
    move no data and are skipped. Also sums the output elements of the ops the FLOP counter does
    not count (elementwise, norms, softmax, ...), as a rough figure of the work it leaves out.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.ops = 0
        self.uncounted_elements = 0

    def __torch_dispatch__(
        self,
        func: torch._ops.OpOverload,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view or func._overloadpacket.__name__.startswith("empty"):
            return out
        inputs = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.ops += 1
        self.bytes += sum(t.numel() * t.element_size() for t in inputs + outputs)
        if func._overloadpacket not in flop_registry:
            self.uncounted_elements += sum(t.numel() for t in outputs)
        return out


def _chunk_modules(
    preset: str, shape: StreamShape, dtype: torch.dtype
) -> list[tuple[str, nn.Module, list[tuple[tuple[int, ...], torch.dtype]]]]:
    """The three modules of one chunk call, with their inputs' shapes and dtypes (batch 1)."""
    config = PRESETS[preset]
    renderer = RendererChunk(Renderer(config.renderer), shape).to(dtype)
    expressions = Expressions(AudioToExpression(config.audio)).to(dtype)
    # The smoothing weights are tiny; the torch backend keeps them (and BatchNorm) in fp32.
    smoothing = CausalSmoothingWeights(
        AdaptiveSmoothing(config.smoothing, config.audio.mouth_dims, config.audio.lookahead_frames)
    )
    return [
        ("renderer", renderer, [(size, dtype) for size in shape.renderer_inputs(1).values()]),
        ("audio2expression", expressions, [(shape.expression_io(1)[0], dtype)]),
        ("smoothing", smoothing, [(shape.smoothing_io(1)[0], torch.float32)]),
    ]


@functools.lru_cache(maxsize=64)
def _frame_cost(preset: str, chunk_frames: int | None, dtype: str) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    shape = StreamShape.for_config(PRESETS[preset], chunk_frames=chunk_frames)
    chunk = shape.chunk_frames
    parts: dict[str, dict[str, float]] = {}
    weight_bytes = 0
    with torch.device("meta"):
        for name, module, inputs in _chunk_modules(preset, shape, DTYPES[dtype]):
            module.eval()
            weight_bytes += sum(p.numel() * p.element_size() for p in module.parameters())
            tensors = [torch.empty(size, dtype=kind) for size, kind in inputs]
            with torch.no_grad(), FlopCounterMode(display=False) as counter, _Traffic() as traffic:
                module(*tensors)
            parts[name] = {
                "gflop_per_frame": counter.get_total_flops() / 1e9 / chunk,
                "mbytes_per_frame": traffic.bytes / 1e6 / chunk,
                "uncounted_gop_per_frame": traffic.uncounted_elements / 1e9 / chunk,
                "aten_ops_per_chunk": traffic.ops,
            }
    gflop = sum(part["gflop_per_frame"] for part in parts.values())
    mbytes = sum(part["mbytes_per_frame"] for part in parts.values())
    return {
        "preset": preset,
        "dtype": dtype,
        "chunk_frames": chunk,
        "past_frames": shape.past_frames,
        "gflop_per_frame": gflop,
        "mbytes_per_frame": mbytes,
        "weight_mbytes": weight_bytes / 1e6,
        "flop_per_byte": gflop * 1e3 / mbytes,
        "uncounted_gop_per_frame": sum(part["uncounted_gop_per_frame"] for part in parts.values()),
        "parts": parts,
    }


def frame_cost(preset: str, chunk_frames: int | None = None, dtype: str = "fp32") -> dict[str, Any]:
    """What one rendered frame costs in the real-time chunk call, counted on meta tensors.

    A chunk is one audio-to-expression call (its fixed audio window), one causal smoothing-weights
    call (its fixed window) and one renderer call of C new frames over the P + C window, batch 1;
    every figure is the chunk's divided by C.

    - ``gflop_per_frame``: FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
      convolutions, attention; elementwise ops, norms and softmax count 0 — their rough size,
      one op per output element, is ``uncounted_gop_per_frame``, not part of the ceiling).
    - ``mbytes_per_frame``: memory traffic (1 MB = 1e6 bytes) under a no-reuse model: for every aten
      op executed, the bytes of all its tensor inputs (weights included, at every use) plus all its
      tensor outputs, as if each op read its operands from DRAM and wrote its results back;
      views and ``empty`` move nothing and count 0. It is an upper bound of DRAM traffic for eager
      execution of these ops: caches reuse some of it, and fusion (compile, TensorRT) removes some.
      Attention counts as the math path (scores materialised), as meta tensors run it.
    - ``weight_mbytes``: parameter bytes of the three networks (not per frame).
    - ``chunk_frames``, ``past_frames``: C and P (``chunk_frames=None``: the preset's default C).
    - ``flop_per_byte``: arithmetic intensity; ``parts``: the same per network.

    Args:
        preset: a key of ``engines.nets.PRESETS``.
        chunk_frames: C; None for the preset's streaming default.
        dtype: ``fp32`` (4 bytes an element, the CPU) or ``fp16`` (GPU; the smoothing stays fp32).

    Returns:
        a fresh dict (results are cached; mutating one does not change the next).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: use one of {sorted(DTYPES)}")
    return copy.deepcopy(_frame_cost(preset, chunk_frames, dtype))


def _time_calls(call: Callable[[], Any], seconds: float, sync: Callable[[], None]) -> list[float]:
    """Seconds per call, from groups of calls lasting at least ~10 ms each, for about ``seconds``."""
    for _ in range(2):  # warm up
        call()
    sync()
    start = time.perf_counter()
    call()
    sync()
    repeats = max(1, int(0.01 / max(time.perf_counter() - start, 1e-9)))
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        sync()
        samples.append((time.perf_counter() - start) / repeats)
    return samples


def _matmul_seconds(
    n: int, device: torch.device, dtype: torch.dtype, seconds: float, sync: Callable[[], None]
) -> list[float]:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    return _time_calls(lambda: torch.mm(a, b, out=c), seconds, sync)


def _copy_seconds(
    mib: int, device: torch.device, seconds: float, sync: Callable[[], None]
) -> tuple[list[float], int]:
    """Seconds per ``dst.copy_(src)`` of ``mib`` MiB of fp32, and the bytes a copy moves."""
    src = torch.randn(mib * 2**20 // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    return _time_calls(lambda: dst.copy_(src), seconds, sync), 2 * src.numel() * src.element_size()


def measure_peak(
    device: str = "cpu",
    seconds: float = 2.0,
    matmul_size: int | None = None,
    copy_mib: int | None = None,
) -> dict[str, Any]:
    """This machine's measured peak FLOP/s and memory bandwidth, with all torch threads.

    FLOP/s: ``torch.mm`` of two n x n matrices (2 n³ FLOPs; fp32 n = 2048 on the CPU, fp16 n = 8192
    on CUDA). Bandwidth: ``dst.copy_(src)`` of ``copy_mib`` MiB of fp32 (256 MiB), counted as
    2 x size bytes a copy (read + write). Each is timed for about ``seconds`` after warm-up calls
    (synchronised on CUDA); best and median are reported (1 GB = 1e9 bytes).

    Returns:
        device, dtype, threads, matmul_size, copy_mib, gflop_per_s_best/median,
        gbyte_per_s_best/median, machine_balance_flop_per_byte (best FLOP/s over best bytes/s).
    """
    target = torch.device(device)
    on_cuda = target.type == "cuda"
    dtype = torch.float16 if on_cuda else torch.float32
    n = matmul_size or (8192 if on_cuda else 2048)
    mib = copy_mib or 256

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize(target)

    with torch.no_grad():
        matmul = _matmul_seconds(n, target, dtype, seconds, sync)
        copies, moved = _copy_seconds(mib, target, seconds, sync)
    flops = [2 * n**3 / s / 1e9 for s in matmul]
    bandwidth = [moved / s / 1e9 for s in copies]
    return {
        "device": str(target),
        "device_name": torch.cuda.get_device_name(target) if on_cuda else None,
        "dtype": "fp16" if on_cuda else "fp32",
        "threads": torch.get_num_threads(),
        "matmul_size": n,
        "copy_mib": mib,
        "gflop_per_s_best": max(flops),
        "gflop_per_s_median": statistics.median(flops),
        "gbyte_per_s_best": max(bandwidth),
        "gbyte_per_s_median": statistics.median(bandwidth),
        "machine_balance_flop_per_byte": max(flops) / max(bandwidth),
    }


def ceiling(cost: dict[str, Any], peak: dict[str, Any]) -> dict[str, Any]:
    """Frames/s bounds of one ``frame_cost`` on one ``measure_peak``, from the best peaks.

    Returns:
        compute_bound_fps (peak FLOP/s / FLOPs a frame), memory_bound_fps (peak bytes/s / bytes a
        frame, no-reuse bytes, so a pessimistic bound), ceiling_fps (the smaller) and bound
        (``compute`` or ``memory``, whichever binds).
    """
    compute = peak["gflop_per_s_best"] / cost["gflop_per_frame"]
    memory = peak["gbyte_per_s_best"] * 1e3 / cost["mbytes_per_frame"]
    return {
        "compute_bound_fps": compute,
        "memory_bound_fps": memory,
        "ceiling_fps": min(compute, memory),
        "bound": "compute" if compute <= memory else "memory",
    }


def markdown(result: dict[str, Any]) -> str:
    peak = result["peak"]
    lines = [
        f"# physical ceiling — {result['date']}",
        "",
        f"{common.machine_line(result)}, device {peak['device']} ({peak['dtype']}, "
        f"{peak['threads']} threads). "
        f"Peaks: {peak['gflop_per_s_best']:.1f} GFLOP/s (best; median {peak['gflop_per_s_median']:.1f}) "
        f"from a {peak['matmul_size']}² matmul, {peak['gbyte_per_s_best']:.1f} GB/s (best; median "
        f"{peak['gbyte_per_s_median']:.1f}) from a {peak['copy_mib']} MiB copy (read + write).",
        "",
        "Per rendered frame of a real-time chunk (one audio-to-expression, one smoothing and one "
        "renderer call of C frames, divided by C). FLOPs from `torch.utils.flop_counter` (matmuls and "
        "convolutions; elementwise ops count 0). MB/frame assumes no reuse: every aten op reads all its "
        "inputs and writes all its outputs to memory, so the memory bound is pessimistic (caches reuse "
        "some). The ceiling is the smaller bound; no backend renders faster.",
        "",
    ]
    columns = ["preset", "C", "P", "GFLOP/frame", "MB/frame (no reuse)", "weights MB", "compute-bound f/s"]
    columns += ["memory-bound f/s", "ceiling f/s", "bound"]
    measured = ("mbytes_per_frame", "weight_mbytes", "compute_bound_fps", "memory_bound_fps", "ceiling_fps")
    cells = [
        [row["preset"], row["chunk_frames"], row["past_frames"], f"{row['gflop_per_frame']:.3f}"]
        + [f"{row[key]:.1f}" for key in measured]
        + [row["bound"]]
        for row in result["rows"]
    ]
    return "\n".join(lines + common.markdown_table(columns, "lrrrrrrrrl", cells)) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    rows = result["rows"]
    labels = [f"{row['preset']}\nC={row['chunk_frames']}" for row in rows]
    positions = range(len(rows))
    width = 0.38
    with common.figure(path, figsize=(max(5, 1.6 * len(rows)), 4)) as axis:
        axis.bar(
            [x - width / 2 for x in positions],
            [row["compute_bound_fps"] for row in rows],
            width,
            label="compute-bound",
        )
        axis.bar(
            [x + width / 2 for x in positions],
            [row["memory_bound_fps"] for row in rows],
            width,
            label="memory-bound (no reuse)",
        )
        axis.axhline(FPS, color="grey", linestyle="--", linewidth=1, label="25 fps (real time)")
        axis.set_yscale("log")
        axis.set_xticks(list(positions), labels)
        peak = result["peak"]
        axis.set(ylabel="frames/s bound", title=f"physical ceiling on {peak['device']} ({peak['dtype']})")
        axis.legend(fontsize=8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"], choices=sorted(PRESETS))
    parser.add_argument("--chunks", nargs="+", type=int, help="default: each preset's own chunk size")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per peak measurement")
    parser.add_argument("--quick", action="store_true", help="tiny preset, short small peak measurements")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    sizes: dict[str, int | None] = {"matmul_size": None, "copy_mib": None}
    if args.quick:
        args.presets, args.seconds = ["tiny"], 0.3
        sizes = {"matmul_size": 2048 if args.device == "cuda" else 512, "copy_mib": 64}
    dtype = "fp16" if args.device == "cuda" else "fp32"
    peak = measure_peak(args.device, args.seconds, **sizes)
    print(
        f"peak on {peak['device']} ({peak['dtype']}, {peak['threads']} threads): "
        f"{peak['gflop_per_s_best']:.1f} GFLOP/s best ({peak['gflop_per_s_median']:.1f} median), "
        f"{peak['gbyte_per_s_best']:.1f} GB/s best ({peak['gbyte_per_s_median']:.1f} median)",
        flush=True,
    )
    print(
        f"{'preset':6s} {'C':>2s} {'P':>2s} {'GFLOP/f':>9s} {'MB/f':>8s} {'weights MB':>10s} "
        f"{'compute f/s':>11s} {'memory f/s':>10s} {'ceiling f/s':>11s}  bound"
    )
    rows = []
    for preset in args.presets:
        for chunk in args.chunks or [None]:
            cost = frame_cost(preset, chunk, dtype)
            row = {**cost, **ceiling(cost, peak)}
            rows.append(row)
            print(
                f"{preset:6s} {row['chunk_frames']:2d} {row['past_frames']:2d} {row['gflop_per_frame']:9.3f} "
                f"{row['mbytes_per_frame']:8.1f} {row['weight_mbytes']:10.1f} "
                f"{row['compute_bound_fps']:11.1f} {row['memory_bound_fps']:10.1f} "
                f"{row['ceiling_fps']:11.1f}  {row['bound']}",
                flush=True,
            )
    common.report("ceiling", args, markdown, plot, device=args.device, peak=peak, rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
