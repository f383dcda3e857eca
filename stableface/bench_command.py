"""``stableface bench NAME [ARGS]``: runs ``benchmarks/NAME.py`` of the repository checkout.

The benchmarks are scripts beside the packages (they import everything, and write into
``results/``), so this command needs the source tree an editable install comes from.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

from engines.errors import InputError

BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
BENCHMARKS = {
    "latency": "per-stage latency and mouth-to-photon over a WebRTC loopback",
    "throughput": "frames/s per chunk size and live sessions per process until real time breaks",
    "ceiling": "FLOPs and bytes per rendered frame against this machine's measured peaks",
    "avatar_load": "time to load an avatar bundle, an engine, and a whole server process",
    "backends": "inference speed per backend, preset and chunk size",
    "prepare_speed": "speed of `stableface prepare`",
    "train_speed": "training speed and FLOPs per preset",
    "calls": "repeated output slots as real WebRTC calls are added to one server",
    "soak": "calls held for minutes: A/V drift, server memory, frames lost, calls alive",
    "pipecat_call": "the avatar in a pipecat pipeline over WebRTC: frames/s, lip sync (pipecat extra)",
    "sync_validation": "the weights-free lip-sync measure on real clips: known shifts, other voices",
}


def add_bench_parser(sub: Any) -> None:
    bench = sub.add_parser(
        "bench",
        epilog="example: stableface bench latency --quick",
        help="run a benchmark (latency, throughput, ceiling, ...); results in results/",
        description="Run one of the benchmark scripts in benchmarks/ with its own arguments, e.g. "
        "`stableface bench latency --quick` or `stableface bench throughput --help`. Each writes "
        "results/<name>-<date>.json, .md and .png. "
        + "; ".join(f"{name}: {what}" for name, what in BENCHMARKS.items()),
    )
    bench.add_argument("benchmark", choices=sorted(BENCHMARKS), help="which benchmark")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="its arguments (see --help after the name)")
    bench.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    script = BENCHMARKS_DIR / f"{args.benchmark}.py"
    if not script.is_file():
        raise InputError(
            f"{script} not found: the benchmarks run from a clone of the repository (an editable install)"
        )
    spec = importlib.util.spec_from_file_location(f"benchmarks.{args.benchmark}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    status: int = module.main(args.args)
    return status
