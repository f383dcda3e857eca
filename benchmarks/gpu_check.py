"""GPU check: the one prepared run for a lent GPU machine (DESIGN.md section 5, "GPU check").

Eight independent sections. Each has its own time budget: a section stops between steps when its
budget cannot fit the next one and names what it left out; an alarm at budget + grace ends a stuck
one. A failing section is recorded (its error and the end of its traceback) and the next runs.
``gpu-check.json`` and ``gpu-check.md`` are rewritten after every section, so a run killed from
outside still leaves what it measured (the sections not reached say so).

a. environment: GPU name, memory, driver, CUDA / cuDNN / torch and library versions.
b. parity: torch on the device (fp32, bf16, fp16, bf16 with CUDA graphs) against torch on the CPU
   on the same random inputs (``engines.backends.parity.max_differences``) per preset, and the whole
   per-frame path: frames of ``realtime.file_stream.stream_file`` on the device against the CPU
   (uint8 differences of the full output frames).
c. renderer: renderer calls per preset and batch bucket with CUDA graphs + bf16: ms per call
   p50/p95/p99, frames/s, and achieved/ceiling (``benchmarks/ceiling.py``: the whole chunk against
   the preset's ceiling, the renderer against its compute bound).
d. sessions: live sessions per GPU at real time per preset. An engine batching up to N sessions
   (``max_batch`` = N) runs N live sessions (the session code of ``benchmarks/throughput.py``:
   ``StreamingSession`` fed generated speech in real time by ``push_samples``, the same frame
   lateness); N doubles, then is bisected. Real time: p95 frame lateness <= 40 ms and <= 1 % of
   the output slots repeated.
e. stages: per-stage time (audio2expression, smoothing, raster, renderer, paste) of batched chunks
   (``realtime.stream.render_chunks``), the device synchronised at the end of every stage, per
   preset and batch size.
f. loopback: ``stableface serve`` in its own process and an aiortc call to it (the loopback of
   ``benchmarks/latency.py``) with the paper preset: the latency budget, frame delivery timing,
   audio in -> audio out, and audio in -> lips out when the avatar's mouth can be read.
g. memory: GPU memory (``torch.cuda.memory_allocated`` / ``max_memory_allocated``) as live
   sessions are added; with it the size of the state a session keeps on the device.
h. training: renderer training steps per preset as ``stableface train`` runs them on the device
   (``benchmarks/train_speed.py``: bfloat16 autocast, channels-last, the GPU batch): step ms
   p50/p95/p99 and training frames/s.

Avatars are ``benchmarks/preset_avatar.py`` bundles: untrained networks of each preset over the
default avatar's reference video, made on the spot (speed, never quality). ``--dry-run`` runs the
same code on the CPU with tiny shapes (the test suite runs it). Run it through
``benchmarks/gpu_check.sh``, which finds a Python with CUDA-enabled torch and installs missing
packages from carried wheels first:

    bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--sections b c] [--wheels DIR]
    python benchmarks/gpu_check.py [--dry-run] [--out DIR] [--sections b c] [--budget-s 450]

The module imports only the standard library at the top, so ``--missing-modules`` works before
the project's dependencies are in place.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch

    from engines.backends.base import Backend, Precision
    from engines.bundle import AvatarBundle
    from engines.device_frames import DeviceFrames
    from realtime.engine import AvatarEngine
    from realtime.session import StreamingSession

JSON_NAME = "gpu-check.json"
MARKDOWN_NAME = "gpu-check.md"
# Top-level modules the check imports (pyproject's dependencies that these code paths use).
REQUIRED_MODULES = (
    "torch",
    "numpy",
    "cv2",
    "scipy",
    "safetensors",
    "pydantic",
    "threadpoolctl",
    "onnx",
    "onnxruntime",
    "av",
    "aiortc",
    "aiohttp",
    "prometheus_client",
)
# Largest frame difference accepted per precision: fp32 as the backend parity tests
# (tests/test_backends.py), fp16 as the batching tests on CUDA, bf16 8x fp16's (it keeps 8 mantissa
# bits to fp16's 11).
FRAME_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 0.16}
PROBE_MIN_CORRELATION = 0.8  # the mouth probe must follow the geometry this well on held-out speech
STAGES = ("audio2expression", "smoothing", "raster", "renderer", "paste")
MIN_SECTION_S = 3.0  # a section with less time than this left in the whole run is skipped
LOOPBACK_SETUP_S = 8.0  # the server process's start and the call's connection, about
AUDIO_MARGIN_S = 12.0  # speech a live session gets beyond what is measured (its warm-up waits)


# ----------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Plan:
    """What one run measures, and how long each section may take.

    Attributes:
        dry_run: the CPU rehearsal (tiny shapes) instead of the GPU run.
        device: where the backends and the per-frame tensors run (``cuda`` or ``cpu``).
        precision, cuda_graphs: the backend configuration measured by sections c-g.
        budgets_s: seconds per section key (a-h).
        parity_presets, parity_batch, parity_variants: section b's backend comparisons
            ((precision, CUDA graphs) on the device, each against torch fp32 on the CPU).
        stream_preset, stream_seconds, stream_variants: section b's stream comparison.
        renderer_presets, buckets, call_seconds, min_calls: section c's timed calls per bucket.
        peak_seconds, peak_matmul, peak_copy_mib: ``measure_peak`` arguments.
        session_presets, session_start, session_cap, session_seconds, settle_s: section d's search.
        stage_presets, stage_batches, stage_warmup_chunks, stage_chunks: section e.
        loopback_preset, loopback_backend, loopback_seconds, probe_seconds: section f (probe
            seconds: calibration and held-out speech; 0 leaves the probe out).
        memory_preset, memory_counts, memory_step_s: section g.
        train_presets, train_steps: section h (timed steps per preset, after one warm-up).
        preload_s: reference video preloaded on the device per avatar (seconds of frames).
        warmup_calls: untimed calls before each timed series (section c).
        torch_threads: torch's CPU threads (None: torch's default); the dry run uses 1, which
            keeps a busy 2-core machine from stalling on spinning threads.
    """

    dry_run: bool
    device: str
    precision: Precision
    cuda_graphs: bool
    budgets_s: dict[str, float]
    parity_presets: tuple[str, ...]
    parity_batch: int
    parity_variants: tuple[tuple[Precision, bool], ...]
    stream_preset: str
    stream_seconds: float
    stream_variants: tuple[tuple[Precision, bool], ...]
    renderer_presets: tuple[str, ...]
    buckets: tuple[int, ...]
    call_seconds: float
    min_calls: int
    peak_seconds: float
    peak_matmul: int | None
    peak_copy_mib: int | None
    session_presets: tuple[str, ...]
    session_start: int
    session_cap: int
    session_seconds: float
    settle_s: float
    stage_presets: tuple[str, ...]
    stage_batches: tuple[int, ...]
    stage_warmup_chunks: int
    stage_chunks: int
    loopback_preset: str
    loopback_backend: str
    loopback_seconds: float
    probe_seconds: tuple[float, float]
    memory_preset: str
    memory_counts: tuple[int, ...]
    memory_step_s: float
    train_presets: tuple[str, ...]
    train_steps: int
    preload_s: float
    warmup_calls: int
    torch_threads: int | None


GPU_PLAN = Plan(
    dry_run=False,
    device="cuda",
    precision="bf16",
    cuda_graphs=True,
    budgets_s={"a": 10, "b": 55, "c": 80, "d": 150, "e": 40, "f": 55, "g": 35, "h": 35},
    parity_presets=("paper", "small", "tiny"),
    parity_batch=2,
    parity_variants=(("fp32", False), ("bf16", False), ("fp16", False), ("bf16", True)),
    stream_preset="paper",
    stream_seconds=1.2,
    stream_variants=(("fp32", False), ("bf16", True)),
    renderer_presets=("tiny", "small", "paper"),
    buckets=(1, 2, 4, 8, 16, 32),
    call_seconds=0.6,
    min_calls=10,
    peak_seconds=0.5,
    peak_matmul=None,
    peak_copy_mib=None,
    session_presets=("paper", "small", "tiny"),
    session_start=4,
    session_cap=48,
    session_seconds=2.0,
    settle_s=1.0,
    stage_presets=("tiny", "small", "paper"),
    stage_batches=(1, 8, 32),
    stage_warmup_chunks=3,
    stage_chunks=10,
    loopback_preset="paper",
    loopback_backend="torch-cuda",
    loopback_seconds=8.0,
    probe_seconds=(6.0, 4.0),
    memory_preset="paper",
    memory_counts=(1, 2, 4, 8, 16),
    memory_step_s=1.0,
    train_presets=("tiny", "live", "small", "paper"),
    train_steps=6,
    preload_s=8.0,
    warmup_calls=3,
    torch_threads=None,
)

DRY_PLAN = Plan(
    dry_run=True,
    device="cpu",
    precision="fp32",
    cuda_graphs=False,
    budgets_s={"a": 10, "b": 20, "c": 15, "d": 20, "e": 10, "f": 30, "g": 15, "h": 15},
    parity_presets=("tiny",),
    parity_batch=2,
    parity_variants=(("fp32", False),),
    stream_preset="tiny",
    stream_seconds=0.3,
    stream_variants=(("fp32", False),),
    renderer_presets=("tiny",),
    buckets=(1, 2),
    call_seconds=0.1,
    min_calls=3,
    peak_seconds=0.05,
    peak_matmul=256,
    peak_copy_mib=8,
    session_presets=("tiny",),
    session_start=2,
    session_cap=2,
    session_seconds=1.0,
    settle_s=0.2,
    stage_presets=("tiny",),
    stage_batches=(1, 2),
    stage_warmup_chunks=1,
    stage_chunks=2,
    loopback_preset="tiny",
    loopback_backend="torch-cpu",
    loopback_seconds=1.6,
    probe_seconds=(2.0, 1.5),
    memory_preset="tiny",
    memory_counts=(1, 2),
    memory_step_s=0.6,
    train_presets=("tiny",),
    train_steps=2,
    preload_s=1.0,
    warmup_calls=1,
    torch_threads=1,
)


# ---------------------------------------------------------------------------------- budgets


class SectionTimeout(Exception):
    """A section ran past its budget and grace (raised by the alarm)."""


class SectionSkipped(Exception):
    """A section cannot run (its message says why); recorded as skipped, not failed."""


class Budget:
    """One section's time: what is left, what it allows, and what was left out for lack of it.

    Args:
        seconds: the section's budget.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()
        self.deadline = self.started + seconds
        self.left_out: list[str] = []
        self.notes: list[str] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, seconds: float) -> bool:
        """Whether ``seconds`` more fit in the budget."""
        return self.left() >= seconds

    def leave_out(self, what: str) -> None:
        self.left_out.append(what)


@contextlib.contextmanager
def alarm_after(seconds: float) -> Iterator[None]:
    """Raise ``SectionTimeout`` in the main thread after ``seconds`` (no-op off the main thread)."""
    if threading_is_main() and hasattr(signal, "setitimer"):

        def expired(signum: int, frame: FrameType | None) -> None:
            raise SectionTimeout

        previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.1))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    else:
        yield


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def grace_s(budget_s: float) -> float:
    """Extra time a section gets before the alarm: a step under way may finish."""
    return max(10.0, 0.3 * budget_s)


# ---------------------------------------------------------------------------------- context


@dataclass
class Loaded:
    """One preset's avatar, loaded once per run: the bundle and its per-frame tensors on the device."""

    bundle: AvatarBundle
    device_frames: DeviceFrames
    preloaded: int = 0


@dataclass
class Context:
    """What the sections share: the plan, the avatars' folder and the loaded avatars."""

    plan: Plan
    avatars_dir: Path
    _avatars: dict[str, Path] = field(default_factory=dict)
    _loaded: dict[str, Loaded] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """The plan's device; on CUDA with its index, as backends name theirs."""
        import torch

        if self.plan.device == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device(self.plan.device)

    def avatar(self, preset: str) -> Path:
        """The preset's benchmark bundle (``benchmarks/preset_avatar.py``), made on first use."""
        if preset not in self._avatars:
            from benchmarks.preset_avatar import preset_avatar

            self._avatars[preset] = preset_avatar(preset, self.avatars_dir)
        return self._avatars[preset]

    def loaded(self, preset: str, preload: bool = True) -> Loaded:
        """The preset's bundle and device frames; the first ``plan.preload_s`` seconds of its
        reference video cached on the device (a server's long-lived avatar has them cached)."""
        from engines.bundle import AvatarBundle
        from engines.device_frames import DeviceFrames

        entry = self._loaded.get(preset)
        if entry is None:
            bundle = AvatarBundle.load(self.avatar(preset))
            entry = self._loaded[preset] = Loaded(bundle, DeviceFrames(bundle, self.device))
        if preload and not entry.preloaded:
            import torch

            frames = entry.device_frames.images.frames
            count = min(frames, math.ceil(self.plan.preload_s * 25) + 16)
            entry.device_frames.images.preload(torch.arange(count))
            entry.preloaded = count
        return entry


def make_backend(
    plan: Plan, bundle: AvatarBundle, max_batch: int, variant: tuple[Precision, bool] | None = None
) -> Backend:
    """The torch backend of the plan's configuration (or ``variant``: precision, CUDA graphs) on the
    plan's device, for the avatar's streaming shapes and at most ``max_batch`` sessions a call."""
    from engines.backends import StreamShape, TorchBackend

    shape = StreamShape.for_config(bundle.config, max_batch=max_batch)
    if plan.device == "cpu":
        return TorchBackend(bundle.networks, shape, "cpu")
    precision, graphs = variant or (plan.precision, plan.cuda_graphs)
    return TorchBackend(bundle.networks, shape, plan.device, precision, cuda_graphs=graphs)


def open_engine(ctx: Context, preset: str, max_batch: int) -> AvatarEngine:
    """An engine of the preset's avatar with the plan's backend batching up to ``max_batch``
    sessions; the avatar's device frames are the run's shared, preloaded ones."""
    from realtime.engine import AvatarEngine

    loaded = ctx.loaded(preset)
    backend = make_backend(ctx.plan, loaded.bundle, max_batch)
    return AvatarEngine(loaded.bundle, backend, device_frames=loaded.device_frames)


def synchronize(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.lru_cache(maxsize=256)
def speech(seed: int, seconds: float) -> npt.NDArray[np.float32]:
    """(S,) 16 kHz generated speech (``offline_training.synthetic``), made once per seed and length."""
    from offline_training.synthetic.speech import synthesize_speech

    audio: npt.NDArray[np.float32] = synthesize_speech(seed, seconds).audio
    audio.setflags(write=False)
    return audio


def percentiles(values: Sequence[float] | npt.NDArray[Any]) -> dict[str, float]:
    """p50 / p95 / p99 (``benchmarks.common.percentiles``)."""
    from benchmarks.common import percentiles as common_percentiles

    return common_percentiles(list(values))


# ---------------------------------------------------------------------------------- a. environment


def section_environment(ctx: Context, budget: Budget) -> dict[str, Any]:
    """Machine, GPU and library versions (no model work)."""
    import torch

    from benchmarks.common import versions

    result: dict[str, Any] = {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,  # type: ignore[no-untyped-call]
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "versions": versions() | _more_versions(),
        "setup": os.environ.get("STABLEFACE_GPU_CHECK_SETUP", ""),
    }
    if result["versions"].get("tensorrt") is None:
        budget.notes.append("TensorRT is not installed: the tensorrt backend is not measured")
    if not torch.cuda.is_available():
        budget.notes.append("no CUDA device: GPU fields are empty (the dry run runs on the CPU)")
        result["gpu"] = None
        return result
    index = torch.cuda.current_device()
    properties = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    result["gpu"] = {
        "name": properties.name,
        "count": torch.cuda.device_count(),
        "memory_gib": total / 2**30,
        "free_gib": free / 2**30,
        "multiprocessors": properties.multi_processor_count,
        "compute_capability": f"{properties.major}.{properties.minor}",
        "bf16_supported": torch.cuda.is_bf16_supported(),
    }
    result["driver"] = _nvidia_smi(budget)
    return result


def _more_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for package in ("pydantic", "scipy", "safetensors", "aiohttp", "triton"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def _nvidia_smi(budget: Budget) -> dict[str, str] | None:
    query = "name,driver_version,memory.total,clocks.max.sm,power.limit"
    try:
        completed = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        budget.notes.append(f"nvidia-smi: {type(exc).__name__} (driver version unknown)")
        return None
    values = [value.strip() for value in completed.stdout.splitlines()[0].split(",")]
    return dict(zip(query.split(","), values, strict=False))


# ---------------------------------------------------------------------------------- b. parity


def section_parity(ctx: Context, budget: Budget) -> dict[str, Any]:
    """Device backends against the CPU on the same inputs, then whole streams' frames."""
    from engines.backends import StreamShape, TorchBackend
    from engines.backends.parity import max_differences

    plan = ctx.plan
    backends: list[dict[str, Any]] = []
    for preset in plan.parity_presets:
        if not budget.allows(0.15 * budget.seconds):
            budget.leave_out(f"backend parity of {preset}")
            continue
        bundle = ctx.loaded(preset, preload=False).bundle
        shape = StreamShape.for_config(bundle.config, max_batch=plan.parity_batch)
        with TorchBackend(bundle.networks, shape, "cpu") as cpu:
            for precision, graphs in plan.parity_variants:
                with make_backend(plan, bundle, plan.parity_batch, (precision, graphs)) as device:
                    differences = max_differences(cpu, device, batch=plan.parity_batch, seed=0)
                tolerance = FRAME_TOLERANCE[precision]
                backends.append(
                    {
                        "preset": preset,
                        "device": plan.device,
                        "precision": precision,
                        "cuda_graphs": graphs,
                        "batch": plan.parity_batch,
                        "max_abs_diff": differences,
                        "frame_tolerance": tolerance,
                        "frames_within_tolerance": differences["frames"] <= tolerance,
                    }
                )
                print(
                    f"  parity {preset} {plan.device} {precision}{' graphs' if graphs else ''}: "
                    + ", ".join(f"{key} {value:.2e}" for key, value in differences.items()),
                    flush=True,
                )
    streams: list[dict[str, Any]] = []
    if budget.allows(0.2 * budget.seconds):
        streams = _stream_parity(ctx, budget)
    else:
        budget.leave_out("stream frame parity")
    return {"backends": backends, "streams": streams}


def _stream_parity(ctx: Context, budget: Budget) -> list[dict[str, Any]]:
    """uint8 frames of ``stream_file`` on the device against the CPU, same avatar and audio."""
    import numpy as np

    from engines.backends import StreamShape, TorchBackend
    from offline_training.synthetic.speech import synthesize_speech
    from realtime.engine import AvatarEngine

    plan = ctx.plan
    loaded = ctx.loaded(plan.stream_preset)
    bundle = loaded.bundle
    audio = synthesize_speech(21, plan.stream_seconds).audio
    shape = StreamShape.for_config(bundle.config, max_batch=1)
    started = time.monotonic()
    cpu_engine = AvatarEngine(bundle, TorchBackend(bundle.networks, shape, "cpu"))
    try:
        expected = _stream_images(cpu_engine, audio)
    finally:
        cpu_engine.close()
    cpu_s = time.monotonic() - started
    rows = []
    for precision, graphs in plan.stream_variants:
        if not budget.allows(cpu_s):
            budget.leave_out(f"stream parity {precision}{' graphs' if graphs else ''}")
            continue
        backend = make_backend(plan, bundle, 1, (precision, graphs))
        engine = AvatarEngine(bundle, backend, device_frames=loaded.device_frames)
        try:
            frames = _stream_images(engine, audio)
        finally:
            engine.close()
        difference = np.abs(frames.astype(np.int16) - expected.astype(np.int16))
        rows.append(
            {
                "preset": plan.stream_preset,
                "device": plan.device,
                "precision": precision,
                "cuda_graphs": graphs,
                "frames": len(frames),
                "frame_shape": list(frames.shape[1:]),
                "uint8_max_diff": int(difference.max()),
                "uint8_mean_diff": float(difference.mean()),
                "fraction_pixels_over_2": float((difference > 2).mean()),
            }
        )
        print(
            f"  stream {plan.stream_preset} {plan.device} {precision}: {len(frames)} frames, uint8 max "
            f"diff {rows[-1]['uint8_max_diff']}, mean {rows[-1]['uint8_mean_diff']:.3f}",
            flush=True,
        )
    return rows


def _stream_images(engine: AvatarEngine, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """(T, H, W, 3) uint8 full frames of ``audio`` streamed through ``engine``."""
    import numpy as np

    from realtime.file_stream import stream_file

    return np.stack([frame.image for frame in stream_file(engine, audio) if frame.image is not None])


# ---------------------------------------------------------------------------------- c. renderer


def section_renderer(ctx: Context, budget: Budget) -> dict[str, Any]:
    """Renderer and whole-chunk calls per preset and batch bucket, against the ceiling."""
    from benchmarks.ceiling import ceiling, frame_cost, measure_peak

    plan = ctx.plan
    peak = measure_peak(
        plan.device, seconds=plan.peak_seconds, matmul_size=plan.peak_matmul, copy_mib=plan.peak_copy_mib
    )
    print(
        f"  peak {peak['device']} {peak['dtype']}: {peak['gflop_per_s_best']:.0f} GFLOP/s, "
        f"{peak['gbyte_per_s_best']:.0f} GB/s",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    for number, preset in enumerate(plan.renderer_presets):
        share = budget.left() / (len(plan.renderer_presets) - number)
        preset_deadline = time.monotonic() + share
        bundle = ctx.loaded(preset, preload=False).bundle
        started = time.monotonic()
        backend = make_backend(plan, bundle, max(plan.buckets))
        load_s = time.monotonic() - started
        try:
            shape, description = backend.shape, backend.describe()
            cost = frame_cost(preset, shape.chunk_frames, "fp32" if plan.device == "cpu" else "fp16")
            bound = ceiling(cost, peak)
            renderer_bound = peak["gflop_per_s_best"] / cost["parts"]["renderer"]["gflop_per_frame"]
            step_s = 0.0
            for batch in plan.buckets:
                if time.monotonic() + max(step_s, 2 * plan.call_seconds) > preset_deadline:
                    budget.leave_out(f"renderer {preset} batch {batch}")
                    continue
                step_started = time.monotonic()
                row = _time_bucket(ctx, backend, batch)
                step_s = time.monotonic() - step_started
                row.update(
                    preset=preset,
                    backend=description["backend"],
                    precision=description.get("precision"),
                    cuda_graphs=description.get("cuda_graphs"),
                    chunk_frames=shape.chunk_frames,
                    past_frames=shape.past_frames,
                    load_s=load_s,
                    gflop_per_frame=cost["gflop_per_frame"],
                    ceiling_frames_per_s=bound["ceiling_fps"],
                    ceiling_bound=bound["bound"],
                    achieved_over_ceiling=row["chunk_frames_per_s"] / bound["ceiling_fps"],
                    renderer_compute_bound_frames_per_s=renderer_bound,
                    renderer_over_compute_bound=row["renderer_frames_per_s"] / renderer_bound,
                )
                rows.append(row)
                print(
                    f"  renderer {preset} batch {batch}: {row['renderer_ms']['p50']:.2f} ms p50, "
                    f"{row['renderer_frames_per_s']:.0f} frames/s, chunk {row['chunk_frames_per_s']:.0f} "
                    f"frames/s = {100 * row['achieved_over_ceiling']:.1f}% of ceiling",
                    flush=True,
                )
        finally:
            backend.close()
    return {"peak": peak, "rows": rows}


def _time_bucket(ctx: Context, backend: Backend, batch: int) -> dict[str, Any]:
    """ms per renderer call and per whole chunk (audio2expression + smoothing + renderer) at ``batch``.

    The renderer's image inputs lie on the device, as in streaming; audio features come from the
    host. Each call is timed to the end of its device work.
    """
    import numpy as np
    import torch

    from engines.backends.base import ChunkInput

    plan, shape, device = ctx.plan, backend.shape, backend.device
    generator = torch.Generator(device=device).manual_seed(batch)
    sizes = shape.renderer_inputs(batch)

    def uniform(size: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        return torch.rand(size, generator=generator, device=device) * (high - low) + low

    chunk = ChunkInput(
        past_features=torch.randn(sizes["past_features"], generator=generator, device=device),
        eroded=uniform(sizes["eroded"], -1, 1),
        shapes=uniform(sizes["shapes"], 0, 1),
        audio=np.random.default_rng(batch).standard_normal(sizes["audio"]).astype(np.float32),
    )
    rng = np.random.default_rng(batch + 1)
    audio = rng.standard_normal(shape.expression_io(batch)[0]).astype(np.float32)
    mouth = rng.standard_normal(shape.smoothing_io(batch)[0]).astype(np.float32)

    def renderer() -> None:
        backend.run(chunk)

    def whole_chunk() -> None:
        backend.expressions(audio)
        backend.smoothing_weights(mouth)
        backend.run(chunk)

    renderer_ms = _timed_calls(renderer, device, plan.call_seconds, plan.min_calls, plan.warmup_calls)
    chunk_ms = _timed_calls(whole_chunk, device, plan.call_seconds, plan.min_calls, plan.warmup_calls)
    frames = batch * shape.chunk_frames
    return {
        "batch": batch,
        "bucket": _bucket(backend, batch),
        "calls": len(renderer_ms),
        "renderer_ms": percentiles(renderer_ms),
        "chunk_ms": percentiles(chunk_ms),
        "renderer_frames_per_s": 1000 * frames / float(np.percentile(renderer_ms, 50)),
        "chunk_frames_per_s": 1000 * frames / float(np.percentile(chunk_ms, 50)),
    }


def _bucket(backend: Backend, batch: int) -> int:
    bucket_for = getattr(backend, "bucket_for", None)
    return int(bucket_for(batch)) if callable(bucket_for) else batch


def _timed_calls(
    call: Callable[[], None], device: torch.device, seconds: float, min_calls: int, warmup: int
) -> list[float]:
    """ms per ``call`` (each synchronised), for about ``seconds`` and at least ``min_calls``."""
    for _ in range(warmup):
        call()
    synchronize(device)
    samples: list[float] = []
    end = time.monotonic() + seconds
    while len(samples) < min_calls or (time.monotonic() < end and len(samples) < 2000):
        started = time.perf_counter()
        call()
        synchronize(device)
        samples.append(1000 * (time.perf_counter() - started))
    return samples


# ---------------------------------------------------------------------------------- live sessions


class LiveSessions:
    """Live sessions on one engine, added in groups, each fed its own generated speech in real
    time; records every output frame's lateness (the definition of ``benchmarks/throughput.py``:
    how far behind its slot the shown image was made for, plus how late the frame left).

    Args:
        engine: the engine they share (its scheduler batches their chunks).
        audio_s: seconds of speech per session (longer than the sessions run).
    """

    def __init__(self, engine: AvatarEngine, audio_s: float) -> None:
        self.engine = engine
        self.audio_s = audio_s
        self.sessions: list[StreamingSession] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._records: list[tuple[float, float, bool]] = []  # (due s, lateness ms, repeated)
        self._closing = False

    def __len__(self) -> int:
        return len(self.sessions)

    async def add(self, count: int) -> None:
        """Start ``count`` more sessions; returns once their warm-ups are rendered and they run.

        Each session's audio starts flowing when the session is opened, before its warm-up is
        rendered, as a call's audio does (``benchmarks/throughput.py`` likewise).
        """
        from realtime.session import StreamingSession

        started: list[asyncio.Future[None]] = []
        for _ in range(count):
            session = StreamingSession(self.engine, paced=True)
            audio = speech(100 + len(self.sessions), self.audio_s)
            self.sessions.append(session)
            started.append(asyncio.get_running_loop().create_future())
            self._tasks.append(asyncio.create_task(self._run(session, audio, started[-1])))
        await asyncio.gather(*started)

    async def _run(
        self, session: StreamingSession, audio: npt.NDArray[np.float32], started: asyncio.Future[None]
    ) -> None:
        from engines.timebase import FRAME_MS
        from realtime.live import push_samples

        feeder = asyncio.create_task(push_samples(session, audio))
        try:
            await session.start()
            started.set_result(None)
            async for frame in session.frames():
                due = session.due_time(frame.index)
                behind = (
                    (frame.index - (frame.source.index + session.delay)) * FRAME_MS
                    if frame.source is not None
                    else math.inf
                )
                lateness = max(0.0, behind) + max(0.0, 1000 * (session.clock() - due))
                self._records.append((due, lateness, frame.skipped))
                if self._closing:
                    break
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder

    async def measure(self, seconds: float) -> dict[str, Any]:
        """Lateness of the frames due in the next ``seconds``, pooled over the sessions.

        Raises:
            Exception: what a session's work raised.
        """
        import numpy as np

        from benchmarks.throughput import LATENESS_LIMIT_MS, REPEATED_LIMIT

        begin = time.monotonic()
        await asyncio.sleep(seconds)
        end = time.monotonic()
        self._raise_failures()
        window = [(lateness, repeated) for due, lateness, repeated in self._records if begin <= due < end]
        lateness = np.array([value for value, _ in window], float)
        lateness = np.where(np.isfinite(lateness), lateness, 1e6)
        repeated = float(np.mean([flag for _, flag in window])) if window else 1.0
        summary = percentiles(lateness) if len(lateness) else {"p50": 1e6, "p95": 1e6, "p99": 1e6}
        return {
            "sessions": len(self.sessions),
            "frames": len(window),
            "frames_expected": round(len(self.sessions) * (end - begin) * 25),
            "frame_lateness_ms": summary,
            "late_fraction": float((lateness > LATENESS_LIMIT_MS).mean()) if len(lateness) else 1.0,
            "repeated_fraction": repeated,
            "real_time": bool(summary["p95"] <= LATENESS_LIMIT_MS and repeated <= REPEATED_LIMIT),
        }

    def _raise_failures(self) -> None:
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise cast(BaseException, task.exception())

    async def close(self) -> None:
        self._closing = True
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for session in self.sessions:
            await session.close()


def search_capacity(
    run_step: Callable[[int], dict[str, Any]],
    start: int,
    cap: int,
    fits: Callable[[float], bool],
    first_step_s: float = 0.0,
) -> dict[str, Any]:
    """The most sessions that stay in real time: counts double from ``start`` up to ``cap``, then
    the gap between the largest passing and the smallest failing count is bisected until it is at
    most an eighth of the passing count (or 1).

    Args:
        run_step: runs one count, returns a dict with ``real_time``.
        start, cap: first and largest count tried.
        fits: whether a step expected to take the given seconds fits the budget (a step is
            expected to take 1.3 x the longest so far, the first ``first_step_s``).

    Returns:
        max_real_time_sessions (0 when none passed), first_failing (None when the cap passed),
        steps (in the order run), complete (False when the budget cut the search short).
    """
    steps: list[dict[str, Any]] = []
    durations: list[float] = []
    passed, failing = 0, None
    count = max(1, min(start, cap))

    def step(count: int) -> bool | None:
        if not fits(1.3 * max(durations) if durations else first_step_s):
            return None
        started = time.monotonic()
        result = run_step(count)
        durations.append(time.monotonic() - started)
        steps.append(result)
        return bool(result["real_time"])

    complete = True
    while True:
        outcome = step(count)
        if outcome is None:
            complete = False
            break
        if not outcome:
            failing = count
            break
        passed = count
        if count >= cap:
            break
        count = min(cap, 2 * count)
    while complete and failing is not None and failing - passed > max(1, passed // 8):
        count = (passed + failing) // 2
        outcome = step(count)
        if outcome is None:
            complete = False
        elif outcome:
            passed = count
        else:
            failing = count
    return {"max_real_time_sessions": passed, "first_failing": failing, "steps": steps, "complete": complete}


# ---------------------------------------------------------------------------------- d. sessions


def section_sessions(ctx: Context, budget: Budget) -> dict[str, Any]:
    """Live sessions at real time per preset, each count on an engine batching exactly that many.

    ``benchmarks/throughput.run_sessions`` counts each session from its own start; its steps are
    long. These steps are short (seconds), and N sessions opened at once have their warm-ups
    rendered one after the other on the engine's worker, which delays the first sessions' first
    chunks; so the frames counted here are those due in a window that opens once every session
    runs and ``settle_s`` has passed (a server's calls arrive spread out, not all at once).
    """
    from benchmarks.throughput import LATENESS_LIMIT_MS, REPEATED_LIMIT

    plan = ctx.plan
    rows = []
    for number, preset in enumerate(plan.session_presets):
        share_deadline = time.monotonic() + budget.left() / (len(plan.session_presets) - number)
        if share_deadline - time.monotonic() < 2 * plan.session_seconds:
            budget.leave_out(f"sessions of {preset}")
            continue
        ctx.loaded(preset)

        def run_step(count: int, preset: str = preset) -> dict[str, Any]:
            return _session_step(ctx, preset, count)

        def fits(seconds: float, deadline: float = share_deadline) -> bool:
            return time.monotonic() + seconds <= deadline

        first_step_s = plan.session_seconds + plan.settle_s + 2
        search = search_capacity(run_step, plan.session_start, plan.session_cap, fits, first_step_s)
        if not search["complete"]:
            budget.leave_out(f"sessions of {preset} beyond step {len(search['steps'])} (search cut short)")
        rows.append({"preset": preset, **search})
        print(
            f"  sessions {preset}: {search['max_real_time_sessions']} in real time "
            f"(first failing: {search['first_failing']})",
            flush=True,
        )
    return {
        "criterion": f"p95 frame lateness <= {LATENESS_LIMIT_MS:.0f} ms and repeated slots <= "
        f"{100 * REPEATED_LIMIT:.0f}% (benchmarks/throughput.py's)",
        "step_seconds": plan.session_seconds,
        "rows": rows,
    }


def _session_step(ctx: Context, preset: str, count: int) -> dict[str, Any]:
    plan = ctx.plan
    started = time.monotonic()
    engine = open_engine(ctx, preset, count)
    load_s = time.monotonic() - started

    async def measure() -> dict[str, Any]:
        pool = LiveSessions(engine, plan.session_seconds + plan.settle_s + AUDIO_MARGIN_S)
        try:
            await pool.add(count)
            await asyncio.sleep(plan.settle_s)
            return await pool.measure(plan.session_seconds)
        finally:
            await pool.close()

    try:
        result = asyncio.run(measure())
        stats = engine.scheduler.stats
    finally:
        engine.close()
    result.update(
        max_batch=count,
        engine_load_s=load_s,
        batches=stats.batches,
        mean_batch=stats.chunks_rendered / stats.batches if stats.batches else 0.0,
        deferred_chunks=stats.deferred,
    )
    lateness = result["frame_lateness_ms"]
    print(
        f"    {preset} x{count}: lateness p50/p95/p99 {lateness['p50']:.0f}/{lateness['p95']:.0f}/"
        f"{lateness['p99']:.0f} ms, repeated {100 * result['repeated_fraction']:.1f}%, mean batch "
        f"{result['mean_batch']:.1f} -> {'real time' if result['real_time'] else 'NOT real time'}",
        flush=True,
    )
    return result


# ---------------------------------------------------------------------------------- e. stages


class _Synchronised:
    """Passes attribute access through to ``inner``; the named methods synchronise the device
    before returning, so a stage's time includes the device work it queued."""

    def __init__(self, inner: object, device: torch.device, methods: Sequence[str]) -> None:
        self._inner = inner
        self._device = device
        self._methods = frozenset(methods)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name not in self._methods:
            return value

        def synchronised(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            synchronize(self._device)
            return result

        return synchronised


def section_stages(ctx: Context, budget: Budget) -> dict[str, Any]:
    """Per-stage ms of batched chunks, every stage ending with a device synchronisation."""
    from engines.backends.base import Backend
    from engines.device_frames import DeviceFrames
    from offline_training.synthetic.speech import synthesize_speech
    from realtime.stream import AvatarStream, render_chunks

    plan = ctx.plan
    rows: list[dict[str, Any]] = []
    for number, preset in enumerate(plan.stage_presets):
        deadline = time.monotonic() + budget.left() / (len(plan.stage_presets) - number)
        engine = open_engine(ctx, preset, max(plan.stage_batches))
        try:
            device = engine.backend.device
            backend = cast(
                Backend, _Synchronised(engine.backend, device, ("expressions", "smoothing_weights", "run"))
            )
            frames = cast(
                DeviceFrames, _Synchronised(engine.device_frames, device, ("face_shapes", "eroded", "paste"))
            )
            step_s = 0.0
            for batch in plan.stage_batches:
                if time.monotonic() + max(step_s, 0.5) > deadline:
                    budget.leave_out(f"stages {preset} batch {batch}")
                    continue
                started = time.monotonic()
                streams = [
                    AvatarStream(
                        engine.bundle, engine.frames, frames, backend, engine.settings, engine.delay_frames
                    )
                    for _ in range(batch)
                ]
                chunks = plan.stage_warmup_chunks + plan.stage_chunks
                chunk = engine.backend.shape.chunk_frames
                seconds = (chunks * chunk + 2 * engine.lookahead_frames + 4) / 25
                for row_number, stream in enumerate(streams):
                    stream.push(synthesize_speech(200 + row_number, seconds).audio)
                    stream.finish()
                for _ in range(chunks):
                    render_chunks(streams, [True] * batch)
                times = streams[0].times.recent
                stage_ms = {stage: percentiles(times[stage][plan.stage_warmup_chunks :]) for stage in STAGES}
                totals = [
                    sum(values)
                    for values in zip(
                        *(times[stage][plan.stage_warmup_chunks :] for stage in STAGES), strict=True
                    )
                ]
                rows.append(
                    {
                        "preset": preset,
                        "batch": batch,
                        "chunk_frames": chunk,
                        "chunks_timed": plan.stage_chunks,
                        "stage_ms_per_batch": stage_ms,
                        "total_ms_per_batch": percentiles(totals),
                        "stage_ms_per_frame_p50": {
                            stage: stage_ms[stage]["p50"] / (batch * chunk) for stage in STAGES
                        },
                    }
                )
                step_s = time.monotonic() - started
                print(
                    f"  stages {preset} batch {batch}: "
                    + ", ".join(f"{stage} {stage_ms[stage]['p50']:.1f}" for stage in STAGES)
                    + " ms p50 per batch",
                    flush=True,
                )
        finally:
            engine.close()
    return {"synchronised": True, "rows": rows}


# ---------------------------------------------------------------------------------- f. loopback


def section_loopback(ctx: Context, budget: Budget) -> dict[str, Any]:
    """A real WebRTC call to ``stableface serve`` in its own process: what reaches the client, when.

    The call comes first; then the avatar is loaded here for its latency budget and, time allowing,
    a mouth probe is calibrated on it to find the lips in the frames the call received.
    """
    import numpy as np

    from benchmarks.latency import TAIL_S, call
    from benchmarks.lip_timing import analyse, audio_delays_s
    from benchmarks.signals import bursts
    from realtime.engine import AvatarEngine
    from realtime.serve_process import serve_in_process

    plan = ctx.plan
    signal_ = bursts(seed=3, seconds=plan.loopback_seconds)
    needed = signal_.duration_s + TAIL_S + LOOPBACK_SETUP_S
    if not budget.allows(needed):
        raise SectionSkipped(f"the call needs about {needed:.0f} s; {max(budget.left(), 0):.0f} s were left")
    avatar = ctx.avatar(plan.loopback_preset)
    result: dict[str, Any] = {"preset": plan.loopback_preset, "backend": plan.loopback_backend}
    arguments = ["--avatar", f"bench={avatar}", "--backend", plan.loopback_backend, "--max-sessions", "1"]
    synchronize_all()  # the server process gets the device memory this one cached
    started_call = time.monotonic()
    with serve_in_process(arguments) as server:
        result["server_start_s"] = time.monotonic() - started_call
        recording, started = asyncio.run(call(server.url, signal_))
    arrivals = np.array([frame.arrival_s for frame in recording.video])
    pts_ms = np.array([frame.pts for frame in recording.video], float) / 90
    onsets = started + signal_.onsets_s
    audio_delays = [1000 * d for d in audio_delays_s(signal_, started, recording, onsets) if d is not None]
    server_stats = recording.stats[-1] if recording.stats else {}
    spread = 1000 * arrivals - pts_ms  # constant if every frame took the same time to arrive
    result.update(
        signal_s=signal_.duration_s,
        onsets_sent=len(signal_.onsets_s),
        frames_received=len(arrivals),
        received_frames_per_s=(len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
        if len(arrivals) > 2
        else None,
        first_frame_after_audio_start_ms=1000 * (arrivals[0] - started) if len(arrivals) else None,
        frame_interval_ms=percentiles(np.diff(arrivals) * 1000) if len(arrivals) > 2 else None,
        delivery_jitter_ms=percentiles(spread - spread.min()) if len(arrivals) > 2 else None,
        audio_in_to_audio_out_ms=percentiles(audio_delays) if audio_delays else None,
        onsets_with_audio=len(audio_delays),
        server_stats={
            key: server_stats.get(key)
            for key in ("pipeline_latency_ms", "frames_sent", "frames_skipped", "lag_ms")
        },
        rtt_ms_p50=float(np.median(recording.rtt_ms)) if recording.rtt_ms else None,
    )
    engine = AvatarEngine.load(avatar, plan.loopback_backend)  # as the server loaded it
    try:
        result["latency_budget_ms"] = engine.latency_budget()
        result["pipeline_delay_ms"] = engine.latency_ms
        calibration_s, held_out_s = plan.probe_seconds
        if not budget.allows(calibration_s + held_out_s + 5):
            budget.leave_out("the mouth probe (lips out)")
            result["lips"] = "not measured: no time left to calibrate the mouth probe"
        else:
            probe, correlation = _mouth_probe(engine, calibration_s, held_out_s)
            result["probe_correlation_held_out"] = correlation
            if correlation < PROBE_MIN_CORRELATION:
                result["lips"] = (
                    "not measured: the untrained avatar's mouth pixels do not follow its mouth geometry "
                    f"(probe correlation {correlation:.2f} on held-out speech, need {PROBE_MIN_CORRELATION})"
                )
            else:
                lips = analyse(signal_, recording, started, probe)
                delays = lips["audio_in_to_lips_out_ms"]
                result["audio_in_to_lips_out_ms"] = percentiles(delays) if delays else None
                result["av_offset_ms"] = percentiles(lips["av_offset_ms"]) if lips["av_offset_ms"] else None
                result["onsets_matched"] = lips["onsets_matched"]
                result["lips"] = "measured" if delays else "not measured: no lip onset matched a sent onset"
    finally:
        engine.close()
    print(
        f"  loopback {plan.loopback_preset}: {len(arrivals)} frames, pipeline delay "
        f"{result['pipeline_delay_ms']:.0f} ms, audio in -> out p50 "
        f"{(result['audio_in_to_audio_out_ms'] or {}).get('p50', float('nan')):.0f} ms; "
        f"lips: {result['lips']}",
        flush=True,
    )
    return result


def _mouth_probe(engine: AvatarEngine, calibration_s: float, held_out_s: float) -> tuple[Any, float]:
    """A mouth probe calibrated on generated speech, and how well its score follows the mouth
    geometry (inner-lip area) on other speech: the Pearson correlation."""
    import numpy as np

    from offline_training.synthetic.speech import synthesize_speech
    from realtime.file_stream import stream_file
    from realtime.mouth_probe import MouthProbe

    probe = MouthProbe.calibrate(engine, synthesize_speech(101, calibration_s).audio)
    frames = [f for f in stream_file(engine, synthesize_speech(102, held_out_s).audio) if f.image is not None]
    scores = np.array([probe.score(f.image) for f in frames if f.image is not None])
    areas = np.array([f.inner_lip_area for f in frames])
    if scores.std() == 0 or areas.std() == 0:
        return probe, 0.0
    return probe, float(np.corrcoef(scores, areas)[0, 1])


def synchronize_all() -> None:
    """Finish device work and give cached blocks back, so another process gets the memory."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------- g. memory


def section_memory(ctx: Context, budget: Budget) -> dict[str, Any]:
    """Device memory as live sessions are added to one engine (batching up to the largest count)."""
    import numpy as np
    import torch

    plan = ctx.plan
    preset, counts = plan.memory_preset, plan.memory_counts
    device = ctx.device
    cuda = device.type == "cuda"
    engine = open_engine(ctx, preset, max(counts))
    shape = engine.backend.shape
    smoothing = engine.bundle.config.smoothing.width if engine.bundle.config.use_smoothing else 1
    state_bytes = 4 * (
        shape.past_frames * shape.feature_channels * shape.feature_size**2
        + (smoothing + shape.chunk_frames) * 4 * shape.image_size**2
    )
    if cuda:
        synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline = 0
        budget.notes.append("torch.cuda memory counters need a CUDA device: only the computed state size")

    async def grow() -> list[dict[str, Any]]:
        pool = LiveSessions(engine, len(counts) * (plan.memory_step_s + 2) + AUDIO_MARGIN_S)
        rows = []
        try:
            for count in counts:
                if not budget.allows(plan.memory_step_s + 2):
                    budget.leave_out(f"memory with {count} sessions")
                    break
                await pool.add(count - len(pool))
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                step = await pool.measure(plan.memory_step_s)
                row: dict[str, Any] = {
                    "sessions": count,
                    "frames": step["frames"],
                    "real_time": step["real_time"],
                }
                if cuda:
                    row["allocated_mb"] = (torch.cuda.memory_allocated(device) - baseline) / 1e6
                    row["peak_mb"] = (torch.cuda.max_memory_allocated(device) - baseline) / 1e6
                    row["reserved_mb"] = torch.cuda.memory_reserved(device) / 1e6
                rows.append(row)
                print(
                    f"  memory {preset} x{count}: " + ", ".join(f"{k} {v}" for k, v in row.items()),
                    flush=True,
                )
        finally:
            await pool.close()
        return rows

    try:
        rows = asyncio.run(grow())
    finally:
        engine.close()
    result: dict[str, Any] = {
        "preset": preset,
        "max_batch": max(counts),
        "baseline_allocated_mb": baseline / 1e6 if cuda else None,
        "session_state_mb_computed": state_bytes / 1e6,
        "rows": rows,
    }
    if cuda and len(rows) >= 2:
        x = np.array([row["sessions"] for row in rows], float)
        result["allocated_mb_per_session"] = float(np.polyfit(x, [row["allocated_mb"] for row in rows], 1)[0])
        result["peak_mb_per_session"] = float(np.polyfit(x, [row["peak_mb"] for row in rows], 1)[0])
    return result


def section_training(ctx: Context, budget: Budget) -> dict[str, Any]:
    """Renderer training steps per preset on the device, as ``stableface train`` runs them."""
    import torch

    from benchmarks.train_speed import time_training

    rows = []
    for preset in ctx.plan.train_presets:
        if rows and not budget.allows(3 * rows[-1]["seconds"]):
            budget.leave_out(f"training {preset}")
            continue
        started = time.monotonic()
        row = {"preset": preset, **time_training(preset, ctx.plan.train_steps, ctx.device)}
        row["seconds"] = time.monotonic() - started
        rows.append(row)
        print(
            f"  training {preset}: batch {row['batch']}, step {row['step_ms']['p50']:.0f} ms p50, "
            f"{row['train_frames_per_s_p50']:.0f} frames/s",
            flush=True,
        )
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    return {"rows": rows}


# ---------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Section:
    key: str
    name: str
    title: str
    run: Callable[[Context, Budget], dict[str, Any]]


SECTIONS = (
    Section("a", "environment", "environment", section_environment),
    Section("b", "parity", "CUDA parity against the CPU", section_parity),
    Section("c", "renderer", "renderer frames/s per preset and batch", section_renderer),
    Section("d", "sessions", "live sessions per GPU at real time", section_sessions),
    Section("e", "stages", "per-stage GPU timings", section_stages),
    Section("f", "loopback", "audio in to lips out over a WebRTC loopback", section_loopback),
    Section("g", "memory", "GPU memory per session", section_memory),
    Section("h", "training", "training steps per preset", section_training),
)
NOT_REACHED = "not reached: the run ended before this section"
INTERRUPTED = "interrupted (SIGINT: the run's time limit or Ctrl-C)"


def run_sections(
    plan: Plan, keys: Sequence[str], out: Path, avatars: Path, budget_s: float
) -> dict[str, Any]:
    """Run the selected sections in order; the report is rewritten after each one."""
    run_started = time.monotonic()
    deadline = run_started + budget_s
    report: dict[str, Any] = {
        "name": "gpu-check",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "commit": _commit(),
        "dry_run": plan.dry_run,
        "device": plan.device,
        "backend": {"precision": plan.precision, "cuda_graphs": plan.cuda_graphs},
        "budget_s": budget_s,
        "sections": {
            section.key: {
                "name": section.name,
                "title": section.title,
                "status": "not run" if section.key in keys else "not selected",
                "reason": NOT_REACHED if section.key in keys else "not selected (--sections)",
            }
            for section in SECTIONS
        },
    }
    write_report(out, report)
    ctx = Context(plan, avatars)
    try:
        for section in SECTIONS:
            if section.key not in keys:
                continue
            entry = report["sections"][section.key]
            left = deadline - time.monotonic()
            if left < MIN_SECTION_S:
                entry.update(status="skipped", reason=f"the run's budget of {budget_s:.0f} s was spent")
                continue
            print(f"== {section.key}. {section.title}", flush=True)
            outcome, interrupted = _run_section(section, ctx, min(plan.budgets_s[section.key], left))
            entry.update(outcome)
            print(f"   {entry['status']} in {entry['elapsed_s']:.1f} s" + _reason_suffix(entry), flush=True)
            report["elapsed_s"] = time.monotonic() - run_started
            write_report(out, report)
            if interrupted:
                report["interrupted"] = INTERRUPTED
                raise KeyboardInterrupt
    finally:
        report["elapsed_s"] = time.monotonic() - run_started
        write_report(out, report)
    return report


def _run_section(section: Section, ctx: Context, seconds: float) -> tuple[dict[str, Any], bool]:
    """One section's report entry, and whether it was interrupted (SIGINT)."""
    budget = Budget(seconds)
    entry: dict[str, Any] = {"budget_s": seconds}
    interrupted = False
    try:
        with alarm_after(seconds + grace_s(seconds)):
            result = section.run(ctx, budget)
        entry.update(status="partial" if budget.left_out else "ok", reason=None, result=result)
        if budget.left_out:
            entry["reason"] = "time budget: left out " + "; ".join(budget.left_out)
    except SectionSkipped as exc:
        entry.update(status="skipped", reason=str(exc))
    except SectionTimeout:
        entry.update(
            status="failed",
            reason=f"hard time limit: stopped after {time.monotonic() - budget.started:.0f} s "
            f"(budget {seconds:.0f} s + grace {grace_s(seconds):.0f} s)",
        )
    except KeyboardInterrupt:
        entry.update(status="failed", reason=INTERRUPTED)
        interrupted = True
    except Exception as exc:
        entry.update(
            status="failed",
            reason=f"{type(exc).__name__}: {exc}".strip()[:2000],
            traceback=traceback.format_exc().splitlines()[-12:],
        )
    finally:
        entry["elapsed_s"] = time.monotonic() - budget.started
        entry["notes"] = budget.notes
        with contextlib.suppress(Exception):
            synchronize_all()
    return entry, interrupted


def _reason_suffix(entry: dict[str, Any]) -> str:
    return f": {entry['reason']}" if entry.get("reason") else ""


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_report(out: Path, report: dict[str, Any]) -> None:
    """``gpu-check.json`` and ``gpu-check.md`` in ``out``, each replaced atomically."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        (JSON_NAME, json.dumps(report, indent=2, default=str) + "\n"),
        (MARKDOWN_NAME, markdown(report)),
    ):
        staging = out / f".{name}.tmp"
        staging.write_text(text)
        staging.replace(out / name)


# ---------------------------------------------------------------------------------- markdown


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: one part per section, its status first."""
    kind = "dry run on the CPU (tiny shapes)" if report["dry_run"] else f"on {report['device']}"
    lines = [
        f"# GPU check — {report['date']}",
        "",
        f"Commit {report['commit']}, {kind}; backend under test: torch {report['backend']['precision']}"
        f"{' with CUDA graphs' if report['backend']['cuda_graphs'] else ''}. "
        f"Run budget {report['budget_s']:.0f} s, took {report.get('elapsed_s', 0.0):.0f} s. "
        "Avatars: untrained preset bundles (`benchmarks/preset_avatar.py`): speed, never quality.",
        "",
    ]
    if report.get("interrupted"):
        lines += [f"**{report['interrupted']}**", ""]
    writers: dict[str, Callable[[dict[str, Any]], list[str]]] = {
        "a": _md_environment,
        "b": _md_parity,
        "c": _md_renderer,
        "d": _md_sessions,
        "e": _md_stages,
        "f": _md_loopback,
        "g": _md_memory,
        "h": _md_training,
    }
    for key, entry in report["sections"].items():
        timing = f", {entry['elapsed_s']:.1f} s of {entry['budget_s']:.0f} s" if "elapsed_s" in entry else ""
        lines += [f"## {key}. {entry['title']} — {entry['status']}{timing}", ""]
        if entry.get("reason"):
            lines += [f"Reason: {entry['reason']}", ""]
        for note in entry.get("notes") or []:
            lines.append(f"- {note}")
        if entry.get("notes"):
            lines.append("")
        if entry.get("result"):
            try:
                lines += [*writers[key](entry["result"]), ""]
            except (KeyError, TypeError, ValueError) as exc:  # a partial result: its JSON has it all
                lines += [f"(table unavailable: {type(exc).__name__}: {exc}; see the JSON)", ""]
    return "\n".join(lines)


def _table(columns: Sequence[str], align: str, rows: Sequence[Sequence[object]]) -> list[str]:
    from benchmarks.common import markdown_table

    return markdown_table(columns, align, rows) if rows else ["(no rows)"]


def _pct(values: dict[str, float] | None, decimals: int = 1) -> str:
    from benchmarks.common import percentile_text

    return percentile_text(values, decimals)


def _md_environment(result: dict[str, Any]) -> list[str]:
    gpu = result.get("gpu") or {}
    driver = result.get("driver") or {}
    cells = [
        [
            "GPU",
            f"{gpu['name']} ({gpu['memory_gib']:.0f} GiB, {gpu['multiprocessors']} SMs, "
            f"compute capability {gpu['compute_capability']})"
            if gpu
            else "none",
        ],
        ["driver", driver.get("driver_version", "—")],
        ["CUDA (torch) / cuDNN", f"{result['torch_cuda']} / {result['cudnn']}"],
        ["torch", f"{result['torch']} ({result['torch_threads']} threads)"],
        ["Python", f"{result['python']} ({result['python_executable']})"],
        ["CPUs", result["cpus"]],
        ["libraries", ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v)],
        ["missing", ", ".join(k for k, v in result["versions"].items() if not v) or "—"],
    ]
    if result.get("setup"):
        cells.append(["setup", result["setup"]])
    return _table(["", "value"], "ll", cells)


def _md_parity(result: dict[str, Any]) -> list[str]:
    lines = ["Backends: largest absolute difference from torch fp32 on the CPU, same random inputs.", ""]
    lines += _table(
        ["preset", "device", "precision", "graphs", "frames", "features", "mouth", "smoothing", "within"],
        "lllrrrrrl",
        [
            [
                r["preset"],
                r["device"],
                r["precision"],
                "yes" if r["cuda_graphs"] else "no",
                f"{r['max_abs_diff']['frames']:.2e}",
                f"{r['max_abs_diff']['features']:.2e}",
                f"{r['max_abs_diff']['mouth']:.2e}",
                f"{r['max_abs_diff']['smoothing_weights']:.2e}",
                f"{'yes' if r['frames_within_tolerance'] else 'NO'} (≤ {r['frame_tolerance']:g})",
            ]
            for r in result["backends"]
        ],
    )
    lines += ["", "Streams: full output frames (uint8) of the same audio, device against CPU.", ""]
    lines += _table(
        ["preset", "device", "precision", "graphs", "frames", "max diff", "mean diff", "pixels > 2"],
        "lllrrrrr",
        [
            [
                r["preset"],
                r["device"],
                r["precision"],
                "yes" if r["cuda_graphs"] else "no",
                r["frames"],
                r["uint8_max_diff"],
                f"{r['uint8_mean_diff']:.3f}",
                f"{100 * r['fraction_pixels_over_2']:.3f}%",
            ]
            for r in result["streams"]
        ],
    )
    return lines


def _md_renderer(result: dict[str, Any]) -> list[str]:
    peak = result["peak"]
    lines = [
        f"Peak on {peak['device']} ({peak['dtype']}): {peak['gflop_per_s_best']:.0f} GFLOP/s, "
        f"{peak['gbyte_per_s_best']:.0f} GB/s. Chunk = audio2expression + smoothing + renderer; "
        "achieved/ceiling: chunk frames/s over `ceiling.py`'s ceiling (batch-1 costs); renderer/compute "
        "bound: renderer frames/s over peak FLOP/s ÷ renderer FLOPs a frame.",
        "",
    ]
    lines += _table(
        [
            *("preset", "batch", "bucket", "renderer ms p50/p95/p99", "renderer f/s"),
            *("chunk ms p50/p95/p99", "chunk f/s", "achieved/ceiling", "renderer/compute bound"),
        ],
        "lrrrrrrrr",
        [
            [
                r["preset"],
                r["batch"],
                r["bucket"],
                _pct(r["renderer_ms"], 2),
                f"{r['renderer_frames_per_s']:.0f}",
                _pct(r["chunk_ms"], 2),
                f"{r['chunk_frames_per_s']:.0f}",
                f"{100 * r['achieved_over_ceiling']:.1f}%",
                f"{100 * r['renderer_over_compute_bound']:.1f}%",
            ]
            for r in result["rows"]
        ],
    )
    return lines


def _md_sessions(result: dict[str, Any]) -> list[str]:
    lines = [
        f"Real time: {result['criterion']}; {result['step_seconds']:.1f} s a step, max_batch = sessions.",
        "",
    ]
    lines += _table(
        [
            "preset",
            "real-time sessions",
            "first failing",
            "steps: sessions → lateness p95 ms, repeated %, mean batch",
        ],
        "lrrl",
        [
            [
                r["preset"],
                r["max_real_time_sessions"],
                r["first_failing"] if r["first_failing"] is not None else "—",
                "; ".join(
                    f"{s['sessions']} → {s['frame_lateness_ms']['p95']:.0f}, "
                    f"{100 * s['repeated_fraction']:.1f}%, {s['mean_batch']:.1f}"
                    for s in r["steps"]
                ),
            ]
            for r in result["rows"]
        ],
    )
    return lines


def _md_stages(result: dict[str, Any]) -> list[str]:
    lines = [
        "ms per batched chunk, p50 / p95 / p99; the device is synchronised at the end of every stage.",
        "",
    ]
    lines += _table(
        ["preset", "batch", *STAGES, "total"],
        "lr" + "r" * (len(STAGES) + 1),
        [
            [r["preset"], r["batch"]]
            + [_pct(r["stage_ms_per_batch"][stage], 1) for stage in STAGES]
            + [_pct(r["total_ms_per_batch"], 1)]
            for r in result["rows"]
        ],
    )
    return lines


def _md_loopback(result: dict[str, Any]) -> list[str]:
    budget = result.get("latency_budget_ms") or {}
    server = result.get("server_stats") or {}
    cells = [
        ["preset / backend", f"{result['preset']} / {result['backend']}"],
        [
            "latency budget (configured)",
            ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in budget.items()),
        ],
        [
            "frames received (frames/s)",
            f"{result.get('frames_received')} ({_number(result.get('received_frames_per_s'))})",
        ],
        ["first frame after audio start", _ms(result.get("first_frame_after_audio_start_ms"))],
        ["frame interval ms p50/p95/p99", _pct(result.get("frame_interval_ms"))],
        ["delivery jitter ms p50/p95/p99 (arrival − pts)", _pct(result.get("delivery_jitter_ms"))],
        ["audio in → audio out ms p50/p95/p99", _pct(result.get("audio_in_to_audio_out_ms"))],
        ["audio in → lips out ms p50/p95/p99", _pct(result.get("audio_in_to_lips_out_ms"))],
        ["lips", result.get("lips", "—")],
        [
            "server: pipeline delay / frames sent / skipped",
            f"{server.get('pipeline_latency_ms')} / "
            f"{server.get('frames_sent')} / {server.get('frames_skipped')}",
        ],
        ["RTT ms p50", _ms(result.get("rtt_ms_p50"))],
    ]
    return _table(["", "value"], "ll", cells)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _md_memory(result: dict[str, Any]) -> list[str]:
    lines = [
        f"Preset {result['preset']}, one engine batching up to {result['max_batch']} sessions. "
        "State a session keeps on the device (computed: past-feature cache + face shapes): "
        f"{result['session_state_mb_computed']:.1f} MB.",
        "",
    ]
    if result.get("allocated_mb_per_session") is not None:
        lines += [
            f"Per session (slope): allocated {result['allocated_mb_per_session']:.1f} MB, peak "
            f"{result['peak_mb_per_session']:.1f} MB; baseline {result['baseline_allocated_mb']:.0f} MB.",
            "",
        ]
    lines += _table(
        ["sessions", "frames", "real time", "allocated MB", "peak MB", "reserved MB"],
        "rrlrrr",
        [
            [
                r["sessions"],
                r["frames"],
                "yes" if r["real_time"] else "no",
                *(f"{r[k]:.0f}" if k in r else "—" for k in ("allocated_mb", "peak_mb", "reserved_mb")),
            ]
            for r in result["rows"]
        ],
    )
    return lines


def _md_training(result: dict[str, Any]) -> list[str]:
    lines = [
        "Renderer + adaptive smoothing + PatchGAN steps on random inputs of each preset's shape "
        "(`benchmarks/train_speed.py`); on CUDA bfloat16 autocast and channels-last.",
        "",
    ]
    return lines + _table(
        ["preset", "batch", "step ms p50", "p95", "p99", "train frames/s"],
        "lrrrrr",
        [
            [
                r["preset"],
                r["batch"],
                *(f"{r['step_ms'][q]:.0f}" for q in ("p50", "p95", "p99")),
                f"{r['train_frames_per_s_p50']:.0f}",
            ]
            for r in result["rows"]
        ],
    )


# ---------------------------------------------------------------------------------- environment helpers


def missing_modules() -> list[str]:
    """The required top-level modules this interpreter cannot find (no import is run)."""
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def wheels_to_install(folder: Path) -> list[Path]:
    """The wheels in ``folder`` whose distribution this interpreter does not have installed."""
    from importlib.metadata import PackageNotFoundError, version

    chosen = []
    for wheel in sorted(folder.glob("*.whl")):
        distribution = wheel.name.split("-")[0]
        try:
            version(distribution)
        except PackageNotFoundError:
            chosen.append(wheel)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU, tiny shapes")
    parser.add_argument("--out", type=Path, default=REPO / "results", help="where the report goes")
    parser.add_argument(
        "--sections", nargs="+", choices=[s.key for s in SECTIONS], help="run only these (default: all)"
    )
    parser.add_argument(
        "--budget-s", type=float, help="the whole run's seconds (default: the sum of the sections')"
    )
    parser.add_argument(
        "--avatars",
        type=Path,
        help="where the preset avatars are made (default: <tmp>/stableface-gpu-check-avatars; kept out "
        "of --out: the paper bundle is about 360 MB)",
    )
    parser.add_argument("--missing-modules", action="store_true", help="print the missing modules and exit")
    parser.add_argument(
        "--wheels-to-install", type=Path, metavar="DIR", help="print the wheels to install and exit"
    )
    args = parser.parse_args(argv)
    if args.missing_modules:
        print(" ".join(missing_modules()))
        return 0
    if args.wheels_to_install is not None:
        print("\n".join(str(path) for path in wheels_to_install(args.wheels_to_install)))
        return 0
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    import torch

    if plan.torch_threads is not None:
        torch.set_num_threads(plan.torch_threads)
        os.environ["OMP_NUM_THREADS"] = str(plan.torch_threads)  # the loopback's server process too
    if plan.device == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: torch {torch.__version__} sees no CUDA device (use --dry-run on a CPU)",
            file=sys.stderr,
        )
        return 3
    keys = args.sections or [s.key for s in SECTIONS]
    budget_s = args.budget_s or float(sum(plan.budgets_s[key] for key in keys))
    avatars = args.avatars or Path(os.environ.get("TMPDIR", "/tmp")) / "stableface-gpu-check-avatars"
    print(
        f"gpu_check: {'dry run on the CPU' if plan.dry_run else 'GPU run'}, sections {' '.join(keys)}, "
        f"budget {budget_s:.0f} s, report in {args.out}",
        flush=True,
    )
    try:
        report = run_sections(plan, keys, args.out, avatars, budget_s)
    except KeyboardInterrupt:
        print(f"gpu_check: interrupted; partial report in {args.out / JSON_NAME}", file=sys.stderr)
        return 124
    failed = [key for key, entry in report["sections"].items() if entry["status"] == "failed"]
    print(
        f"gpu_check: done in {report['elapsed_s']:.0f} s: "
        + ", ".join(f"{key} {entry['status']}" for key, entry in report["sections"].items())
        + f"; {args.out / JSON_NAME}, {args.out / MARKDOWN_NAME}",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
