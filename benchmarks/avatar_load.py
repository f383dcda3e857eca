"""How long an avatar takes to load: the bundle alone, the engine ready to stream, and a whole
``stableface serve`` process from start to answering.

- **bundle**: ``AvatarBundle.load`` (manifest, checksums of every file, weights, face model,
  reference frames), in this process, repeated.
- **engine**: ``AvatarEngine.load`` (the bundle plus the inference backend, its ONNX export
  reused), repeated; the first load of a fresh checkout also exports the ONNX graphs, reported
  apart as ``first_engine_s``.
- **serve**: a fresh ``stableface serve`` process (Python start, imports, loading) until it
  prints its URL, repeated.

Usage: ``stableface bench avatar_load [--avatar PATH] [--repeats N] [--quick]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from realtime.serve_process import serve_in_process
from stableface.argtypes import avatar_folder


def _timed(action: Any) -> float:
    started = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - started
    close = getattr(result, "close", None)
    if close is not None:
        close()
    return elapsed


def _serve_start_s(avatar: Path) -> float:
    started = time.perf_counter()
    with serve_in_process(["--avatar", f"bench={avatar}", "--backend", "auto"]):
        return time.perf_counter() - started


def measure(avatar: Path, repeats: int) -> dict[str, Any]:
    from engines.bundle import AvatarBundle
    from realtime.engine import AvatarEngine

    exports = avatar / "engines"
    fresh = not exports.exists()
    first = _timed(lambda: AvatarEngine.load(avatar))
    bundle = [_timed(lambda: AvatarBundle.load(avatar)) for _ in range(repeats)]
    engine = [_timed(lambda: AvatarEngine.load(avatar)) for _ in range(repeats)]
    serve = [_serve_start_s(avatar) for _ in range(max(1, repeats // 3))]
    if fresh:
        shutil.rmtree(exports, ignore_errors=True)  # leave the checkout as it was
    size = sum(
        path.stat().st_size for path in avatar.rglob("*") if path.is_file() and exports not in path.parents
    )
    return {
        "avatar": str(avatar),
        "bundle_bytes": size,
        "first_engine_s": first,
        "first_engine_exported_onnx": fresh,
        "bundle_s": common.percentiles(bundle),
        "engine_s": common.percentiles(engine),
        "serve_start_s": common.percentiles(serve),
        "samples": {"bundle": bundle, "engine": engine, "serve": serve},
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Avatar load time, {result['date']}",
        "",
        f"Avatar `{result['avatar']}`, {result['bundle_bytes'] / 1e6:.1f} MB; commit {result['commit']}, "
        f"{result['machine']['cpus']} CPUs.",
        "",
    ]
    cells = [
        [label]
        + [f"{result[key][q]:.2f} s" for q in ("p50", "p95", "p99")]
        + [len(result["samples"][sample])]
        for key, sample, label in (
            ("bundle_s", "bundle", "bundle (`AvatarBundle.load`)"),
            ("engine_s", "engine", "engine ready to stream (`AvatarEngine.load`)"),
            ("serve_start_s", "serve", "`stableface serve` process start → URL printed"),
        )
    ]
    lines += common.markdown_table(["what", "p50", "p95", "p99", "samples"], "lrrrr", cells)
    exported = " (it exported the ONNX graphs)" if result["first_engine_exported_onnx"] else ""
    lines += ["", f"First engine load in this checkout: {result['first_engine_s']:.2f} s{exported}.", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    samples = result["samples"]
    with common.figure(path, figsize=(6, 3)) as axis:
        axis.boxplot([samples["bundle"], samples["engine"], samples["serve"]])
        axis.set_xticks([1, 2, 3], ["bundle", "engine", "serve"])
        axis.set(ylabel="seconds", title="avatar load time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--avatar", type=avatar_folder, help="avatar bundle, or default (the bundled one; the default)"
    )
    parser.add_argument("--repeats", type=int, default=10, help="loads of each kind (default 10)")
    parser.add_argument("--quick", action="store_true", help="1 load of each kind, 1 server start")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    avatar = common.bench_avatar(args.avatar)
    common.report("avatar_load", args, markdown, plot, **measure(avatar, 1 if args.quick else args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
