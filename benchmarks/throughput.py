"""Throughput: frames/s per chunk size, and how many live sessions one process keeps in real time.

For each chunk size C, with one avatar and one backend in this process:

1. **Saturated**: one session rendering generated speech as fast as it can (no pacing), the whole
   pipeline (features, networks, raster, paste-back): frames/s, set against the physical ceiling
   of the preset on this machine (``benchmarks/ceiling.py``: the networks alone at peak FLOP/s).
2. **Sessions**: 1, 2, 3, ... live sessions on the shared engine, each fed its own generated speech
   in real time (20 ms packets) and paced at 25 fps, for ``--seconds``. Every output frame's
   lateness is how far behind its slot the image it shows was made for (0 when its own frame was
   rendered in time; k·40 ms when a frame k slots older is repeated) plus how late the frame left
   (event-loop delay). Real time breaks at the first session count whose p95 frame lateness
   exceeds 40 ms (one frame); the count before it is the sustained capacity.

Writes ``results/throughput-<date>.json``, ``.md`` and ``.png`` (frames/s and lateness vs sessions).

    python benchmarks/throughput.py [--avatar PATH] [--backend onnxruntime-cpu] [--chunks 1 2 4]
        [--max-sessions 8] [--seconds 20] [--quick]

On a GPU: ``--backend onnxruntime-cuda`` (or ``torch-cuda``, ``tensorrt``) with ``--max-sessions 32``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks.ceiling import ceiling, frame_cost, measure_peak
from benchmarks.latency import stream_settings
from engines.timebase import FPS, FRAME_MS
from offline_training.synthetic.speech import synthesize_speech
from realtime.engine import AvatarEngine
from realtime.file_stream import stream_file
from realtime.live import push_samples
from realtime.session import StreamingSession

LATENESS_LIMIT_MS = FRAME_MS  # p95 frame lateness beyond one frame: real time is broken


def saturated_frames_per_s(engine: AvatarEngine, frames: int) -> float:
    """Frames/s of one unpaced stream over ``frames`` frames of generated speech (after a warm-up)."""
    warmup = 2 * engine.backend.shape.chunk_frames
    audio = synthesize_speech(11, (frames + warmup) / FPS).audio
    started = 0.0
    for count, _ in enumerate(stream_file(engine, audio)):
        if count == warmup:
            started = time.perf_counter()
    return frames / (time.perf_counter() - started)


async def _one_session(engine: AvatarEngine, seed: int, seconds: float) -> dict[str, Any]:
    session = StreamingSession(engine, paced=True)
    audio = synthesize_speech(seed, seconds + 2).audio
    feeder = asyncio.create_task(push_samples(session, audio))
    lateness: list[float] = []
    rendered = 0
    started = time.monotonic()
    try:
        async for frame in session.frames():
            due = session.due_time(frame.index)
            behind = (
                (frame.index - (frame.source.index + session.delay)) * FRAME_MS
                if frame.source is not None
                else float("inf")
            )
            lateness.append(max(0.0, behind) + max(0.0, 1000 * (session.clock() - due)))
            rendered += int(not frame.skipped)
            if time.monotonic() - started >= seconds:
                break
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        await session.close()
    elapsed = time.monotonic() - started
    # The first frames of a call show the silent warm-up; count from the first frame with input.
    steady = lateness[session.delay :]
    return {"lateness_ms": steady, "rendered_per_s": rendered / elapsed, "frames": len(lateness)}


async def run_sessions(engine: AvatarEngine, count: int, seconds: float) -> dict[str, Any]:
    """``count`` concurrent live sessions for ``seconds``; pooled frame lateness and frames/s."""
    results = await asyncio.gather(*(_one_session(engine, 100 + i, seconds) for i in range(count)))
    lateness = np.concatenate([np.asarray(r["lateness_ms"], float) for r in results])
    finite = np.where(np.isfinite(lateness), lateness, 1e6)
    return {
        "sessions": count,
        "frame_lateness_ms": common.percentiles(finite),
        "late_fraction": float((finite > LATENESS_LIMIT_MS).mean()),
        "rendered_frames_per_s": sum(r["rendered_per_s"] for r in results),
        "rendered_frames_per_s_per_session": [round(r["rendered_per_s"], 2) for r in results],
        "real_time": bool(np.percentile(finite, 95) <= LATENESS_LIMIT_MS),
    }


def measure(args: argparse.Namespace, avatar: Path, peak: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for chunk in args.chunks:
        engine = AvatarEngine.load(avatar, args.backend, stream_settings(args, chunk))
        try:
            shape = engine.backend.shape
            preset = engine.bundle.config.preset
            bound = ceiling(frame_cost(preset, shape.chunk_frames), peak)
            saturated = saturated_frames_per_s(engine, args.saturated_frames)
            row: dict[str, Any] = {
                "preset": preset,
                "backend": engine.backend.name,
                "chunk_frames": shape.chunk_frames,
                "past_frames": shape.past_frames,
                "pipeline_delay_ms": engine.latency_ms,
                "saturated_frames_per_s": saturated,
                "ceiling_frames_per_s": bound["ceiling_fps"],
                "achieved_over_ceiling": saturated / bound["ceiling_fps"],
                "sessions": [],
            }
            print(
                f"{preset} {row['backend']} C={shape.chunk_frames}: saturated {saturated:.1f} frames/s "
                f"(ceiling {bound['ceiling_fps']:.1f}, {100 * row['achieved_over_ceiling']:.0f}%)",
                flush=True,
            )
            for count in range(1, args.max_sessions + 1):
                step = asyncio.run(run_sessions(engine, count, args.seconds))
                row["sessions"].append(step)
                lateness = step["frame_lateness_ms"]
                print(
                    f"  {count} session(s): {step['rendered_frames_per_s']:.1f} rendered frames/s, "
                    f"lateness p50/p95/p99 {lateness['p50']:.0f}/{lateness['p95']:.0f}/"
                    f"{lateness['p99']:.0f} ms, {100 * step['late_fraction']:.1f}% late",
                    flush=True,
                )
                if not step["real_time"]:
                    break
            row["max_real_time_sessions"] = sum(step["real_time"] for step in row["sessions"])
        finally:
            engine.close()
        rows.append(row)
    return rows


def markdown(result: dict[str, Any]) -> str:
    peak = result["peak"]
    lines = [
        f"# throughput — {result['date']}",
        "",
        f"{common.machine_line(result)}. Avatar `{result['avatar']}`. Measured peak "
        f"{peak['gflop_per_s_best']:.0f} GFLOP/s, {peak['gbyte_per_s_best']:.1f} GB/s. "
        f"Sessions: {result['seconds']:.0f} s each step; "
        f"real time = p95 frame lateness ≤ {LATENESS_LIMIT_MS:.0f} ms.",
        "",
    ]
    columns = ["preset", "backend", "C", "saturated frames/s", "ceiling frames/s", "achieved/ceiling"]
    columns += ["real-time sessions", "sessions: rendered frames/s, lateness p95 ms"]
    cells = [
        [
            row["preset"],
            row["backend"],
            row["chunk_frames"],
            f"{row['saturated_frames_per_s']:.1f}",
            f"{row['ceiling_frames_per_s']:.1f}",
            f"{100 * row['achieved_over_ceiling']:.0f}%",
            row["max_real_time_sessions"],
            _steps(row["sessions"]),
        ]
        for row in result["rows"]
    ]
    return "\n".join(lines + common.markdown_table(columns, "llrrrrrl", cells)) + "\n"


def _steps(sessions: list[dict[str, Any]]) -> str:
    """``count: frames/s, lateness p95`` of each session-count step."""
    return "; ".join(
        f"{s['sessions']}: {s['rendered_frames_per_s']:.0f} f/s, {s['frame_lateness_ms']['p95']:.0f}"
        for s in sessions
    )


def plot(result: dict[str, Any], path: Path) -> None:
    top = max((row["sessions"][-1]["sessions"] for row in result["rows"]), default=1)
    with common.figure(path, 1, 2, figsize=(11, 4)) as (left, right):
        for row in result["rows"]:
            label = f"{row['backend']} C={row['chunk_frames']}"
            counts = [s["sessions"] for s in row["sessions"]]
            left.plot(counts, [s["rendered_frames_per_s"] for s in row["sessions"]], marker="o", label=label)
            right.plot(
                counts,
                [min(s["frame_lateness_ms"]["p95"], 1000) for s in row["sessions"]],
                marker="o",
                label=label,
            )
        left.plot(
            [1, top], [FPS, FPS * top], color="grey", linestyle="--", linewidth=1, label="25 fps × sessions"
        )
        left.set(title="rendered frames/s, all sessions", xlabel="concurrent sessions", ylabel="frames/s")
        right.axhline(LATENESS_LIMIT_MS, color="grey", linestyle="--", linewidth=1, label="limit (one frame)")
        right.set(title="frame lateness p95", xlabel="concurrent sessions", ylabel="ms (capped at 1000)")
        for axis in (left, right):
            axis.legend(fontsize=7)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_avatar_arguments(parser)
    parser.add_argument("--backend", default="onnxruntime-cpu")
    parser.add_argument("--chunks", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--max-sessions", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each session-count step")
    parser.add_argument("--saturated-frames", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="one chunk size, up to 2 sessions, 2 s")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.chunks, args.max_sessions, args.seconds, args.saturated_frames = args.chunks[:1], 2, 2.0, 20
    avatar = common.bench_avatar(args.avatar)
    device = "cuda" if "cuda" in args.backend or args.backend == "tensorrt" else "cpu"
    peak = measure_peak(device, seconds=0.3 if args.quick else 2.0)
    rows = measure(args, avatar, peak)
    common.report(
        "throughput", args, markdown, plot, avatar=str(avatar), seconds=args.seconds, peak=peak, rows=rows
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
