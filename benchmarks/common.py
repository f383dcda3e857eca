"""Shared helpers of the benchmark scripts: machine description, percentiles, result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from stableface.argtypes import avatar_folder

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    import torch

    return {
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions(),
    }


def versions() -> dict[str, str | None]:
    """Versions of the libraries whose speed the benchmarks measure."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for package in (
        "torch",
        "onnxruntime",
        "onnxruntime-gpu",
        "tensorrt",
        "numpy",
        "opencv-python",
        "av",
        "aiortc",
    ):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def percentiles(values: list[float] | np.ndarray) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    return {f"p{q}": float(np.percentile(array, q)) for q in (50, 95, 99)}


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def _numpy_scalar(value: object) -> object:
    """JSON for numpy scalars (numpy 2 keeps float32 results float32, which json refuses)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def write_results(
    folder: Path, name: str, result: dict[str, Any], markdown: str, quick: bool, label: str | None = None
) -> Path:
    """Write ``<name>-<date>[-<label>][-quick].json`` and ``.md`` into ``folder``; returns the JSON path."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{result['date']}" + (f"-{label}" if label else "") + ("-quick" if quick else "")
    (folder / f"{stem}.json").write_text(json.dumps(result, indent=2, default=_numpy_scalar) + "\n")
    (folder / f"{stem}.md").write_text(markdown)
    return folder / f"{stem}.json"


def bench_avatar(path: Path | None) -> Path:
    """The avatar to measure: ``path``, else the bundled default avatar."""
    from engines.bundle import DEFAULT_AVATAR_DIR, MANIFEST
    from engines.errors import InputError

    if path is not None:
        return path
    if (DEFAULT_AVATAR_DIR / MANIFEST).is_file():
        return DEFAULT_AVATAR_DIR
    raise InputError(
        f"no avatar to measure: pass --avatar PATH (no default avatar at {DEFAULT_AVATAR_DIR}; "
        "`stableface build-default` rebuilds it)"
    )


def cdf_plot(axis: Any, values: list[float] | np.ndarray, label: str) -> None:
    """Draw the empirical CDF of ``values`` on a matplotlib axis."""
    ordered = np.sort(np.asarray(values, dtype=float))
    if len(ordered):
        axis.step(ordered, np.arange(1, len(ordered) + 1) / len(ordered), where="post", label=label)


def run_script(main: Callable[[list[str] | None], int]) -> int:
    """Run a benchmark's ``main`` as a script: a user error is one line on stderr and status 1."""
    from engines.errors import StableFaceError

    try:
        return main(None)
    except StableFaceError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        return 1


@contextmanager
def figure(path: Path, rows: int = 1, columns: int = 1, **options: Any) -> Iterator[Any]:
    """The axes of ``plt.subplots(rows, columns, **options)`` on the file-only Agg backend; the
    figure is laid out and saved to ``path`` (PNG, 100 dpi) when the block ends, and closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawing, axes = plt.subplots(rows, columns, **options)
    try:
        yield axes
        drawing.tight_layout()
        drawing.savefig(path, dpi=100)
    finally:
        plt.close(drawing)


def machine_line(result: dict[str, Any]) -> str:
    """``Machine: <processor> (<n> CPUs, torch <version>, <k> threads, GPU <name>), commit <hash>``."""
    m = result["machine"]
    return (
        f"Machine: {m['processor']} ({m['cpus']} CPUs, torch {m['torch']}, {m['torch_threads']} threads, "
        f"GPU {m['gpu']}), commit {result['commit']}"
    )


def markdown_table(columns: Sequence[str], align: str, rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a Markdown table: a header, the alignment row and one line a row.

    Args:
        columns: the column titles.
        align: one letter a column, ``l`` (left, text) or ``r`` (right, numbers).
        rows: the cells of each row, already formatted (``str()`` is applied).
    """
    if len(align) != len(columns) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r}: one of l/r for each of the {len(columns)} columns")
    rule = "".join("---|" if side == "l" else "---:|" for side in align)
    lines = ["| " + " | ".join(columns) + " |", "|" + rule]
    for cells in rows:
        if len(cells) != len(columns):
            raise ValueError(f"a row of {len(cells)} cells in a table of {len(columns)} columns")
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return lines


def percentile_text(values: dict[str, float] | None, decimals: int = 0) -> str:
    """``p50 / p95 / p99`` of a ``percentiles`` dict; ``—`` for None."""
    if not values:
        return "—"
    return " / ".join(f"{values[q]:.{decimals}f}" for q in ("p50", "p95", "p99"))


def report(
    name: str,
    args: Any,
    markdown: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], None] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The result (name, date, commit, machine, quick, then ``fields``) written as JSON, Markdown
    and, with a ``plot``, PNG into ``args.results``; the Markdown is printed too."""
    result = {
        "name": name,
        "date": today(),
        "commit": git_commit(),
        "machine": machine(),
        "quick": args.quick,
    }
    result.update(fields)
    text = markdown(result)
    json_path = write_results(args.results, name, result, text, args.quick, getattr(args, "label", None))
    if plot is not None:
        plot(result, json_path.with_suffix(".png"))
    print(text)
    return result


def add_avatar_arguments(parser: Any) -> None:
    """``--avatar`` and ``--compute-allowance-ms``: what the live benchmarks run."""
    parser.add_argument(
        "--avatar", type=avatar_folder, help="avatar bundle, or default (the bundled one; the default)"
    )
    parser.add_argument(
        "--compute-allowance-ms",
        type=float,
        help="the sessions' compute allowance in ms (default: the avatar's)",
    )


def add_output_arguments(parser: Any) -> None:
    """``--results`` and ``--label``: where the result files go and what they are called."""
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--label", help="added to the result file names (several runs on one day)")
