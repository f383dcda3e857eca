"""Throughput: live sessions one process keeps in real time, batched and unbatched, per preset.

For each preset (``--presets``) × batching mode (``--batching``) × chunk size, with one avatar and
one backend in this process:

- **batching**: ``unbatched`` loads the engine with ``max_batch=1`` (one session a renderer call);
  ``batched`` with ``max_batch=--max-sessions``, so the render scheduler runs the due chunks of all
  live sessions as one batched call (``realtime/render_scheduler.py``).
- **Saturated**: B unpaced streams rendered together with ``realtime.stream.render_chunks`` (the
  whole renderer pipeline: audio-to-expression, smoothing, raster, renderer, paste-back; features
  pushed beforehand) → frames/s of all B streams, B = 1 (both modes) and 2, 4, max (batched), set
  against the preset's physical ceiling on this machine (``benchmarks/ceiling.py``: the networks
  alone at peak FLOP/s or bandwidth, counted at batch 1) as achieved/ceiling.
- **Sessions**: 1, 2, 3, ... live sessions on the shared engine, each fed its own generated speech
  in real time (20 ms packets) and paced at 25 fps, for ``--seconds``. Per step:

  - frame lateness (p50/p95/p99): how far behind its slot the image a slot shows was made for
    (0 when its own frame was rendered in time; k·40 ms when a frame k slots older is repeated)
    plus how late the slot left (event-loop delay), from the first slot with input on;
  - **repeated**: the fraction of output slots that did not show their own freshly rendered frame
    (they repeated an earlier image or showed a late one): Σ ``frames_skipped`` / Σ ``frames_out``
    of the sessions' own stats (``StreamingSession.stats``), the whole session (the first slot of
    every session shows no rendered frame yet: one slot a session, 0.2 % of a 20 s step;
    ``repeated_fraction_after_start`` counts from the first slot with input on, like the lateness);
  - the scheduler's mean batch size (chunks per batched renderer call) and deferred chunks.

  **Real time** (the issue's definition, "fresh frames"): repeated ≤ 1 % of output slots AND p95
  frame lateness ≤ 40 ms (one frame). The older, looser criterion, p95 lateness ≤ 40 ms alone
  (which tolerates up to 5 % of slots repeating the previous frame), is reported beside it. The
  sweep goes on while either holds; "max real-time sessions" is the largest count up to which
  every step met the criterion.

Avatars: the bundled default avatar's preset (``live``) is that avatar, trained; the other
presets are benchmark-only avatars with the default avatar's face and reference video and
untrained, seeded networks of that preset (``benchmarks/preset_avatar.py``; speed only), cached
under ``RESULTS/avatars``. With ``--avatar PATH`` (and no ``--presets``) only that avatar is
measured; with both, it stands for its own preset.

Writes ``results/throughput-<date>.json``, ``.md`` and ``.png`` (frames/s, lateness and repeated
slots vs sessions).

    python benchmarks/throughput.py [--presets live small] [--batching batched unbatched]
        [--avatar PATH] [--backend onnxruntime-cpu] [--chunks 1 2] [--max-sessions 8]
        [--seconds 20] [--quick]

On a GPU: ``--backend onnxruntime-cuda`` (or ``torch-cuda``, ``tensorrt``) with ``--max-sessions 32``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks.ceiling import ceiling, frame_cost, measure_peak
from benchmarks.latency import stream_settings
from benchmarks.preset_avatar import preset_avatar
from engines.bundle import read_manifest
from engines.errors import InputError
from engines.nets.config import PRESETS
from engines.timebase import FPS, FRAME_MS
from offline_training.synthetic.speech import synthesize_speech
from realtime.engine import AvatarEngine
from realtime.live import push_samples
from realtime.session import StreamingSession
from realtime.stream import render_chunks

LATENESS_LIMIT_MS = FRAME_MS  # p95 frame lateness beyond one frame: real time is broken
REPEATED_LIMIT = 0.01  # the real time: at most 1 % of output slots repeat an earlier image
BATCHING = ("batched", "unbatched")
BUNDLED_PRESET = "live"  # the bundled default avatar's, checked against its manifest when measured
DEFAULT_PRESETS = (BUNDLED_PRESET, "small")
SATURATED_BATCHES = (1, 2, 4)  # and the engine's max_batch
WARMUP_CHUNKS = 2


def saturated_frames_per_s(engine: AvatarEngine, batch: int, frames: int) -> float:
    """Frames/s of ``batch`` unpaced streams rendered together, one ``render_chunks`` call a chunk,
    over about ``frames`` frames in all (after ``WARMUP_CHUNKS`` untimed chunks); their generated
    speech is pushed before the timing starts. Runs on the calling thread (no session may share
    the engine meanwhile)."""
    chunk = engine.backend.shape.chunk_frames
    rounds = max(1, math.ceil(frames / (batch * chunk)))
    seconds = (rounds + WARMUP_CHUNKS + 1) * chunk / FPS + 1.0
    streams = []
    for index in range(batch):
        stream = engine.new_stream()
        stream.push(synthesize_speech(11 + index, seconds).audio)
        stream.finish()
        streams.append(stream)
    render = [True] * batch
    for _ in range(WARMUP_CHUNKS):
        render_chunks(streams, render)
    started = time.perf_counter()
    for _ in range(rounds):
        render_chunks(streams, render)
    return rounds * batch * chunk / (time.perf_counter() - started)


async def _one_session(engine: AvatarEngine, seed: int, seconds: float) -> dict[str, Any]:
    session = StreamingSession(engine, paced=True)
    audio = synthesize_speech(seed, seconds + 2).audio
    feeder = asyncio.create_task(push_samples(session, audio))
    lateness: list[float] = []
    skipped: list[bool] = []
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
            skipped.append(frame.skipped)
            if time.monotonic() - started >= seconds:
                break
        stats = session.stats.snapshot()
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        await session.close()
    elapsed = time.monotonic() - started
    # The first frames of a call show the silent warm-up; count from the first frame with input.
    steady = lateness[session.delay :]
    return {
        "lateness_ms": steady,
        "skipped_after_start": skipped[session.delay :],
        "rendered_per_s": rendered / elapsed,
        "frames": len(lateness),
        "stats": stats,
    }


async def run_sessions(engine: AvatarEngine, count: int, seconds: float) -> dict[str, Any]:
    """``count`` concurrent live sessions for ``seconds``: pooled frame lateness, repeated slots,
    frames/s and the scheduler's batches over the step."""
    scheduler = engine.scheduler.stats
    batches, chunks, deferred = scheduler.batches, scheduler.chunks_rendered, scheduler.deferred
    results = await asyncio.gather(*(_one_session(engine, 100 + i, seconds) for i in range(count)))
    # The counters change on the worker: read them once the batch in flight (if any) has ended.
    await asyncio.get_running_loop().run_in_executor(engine.executor, lambda: None)
    lateness = np.concatenate([np.asarray(r["lateness_ms"], float) for r in results])
    finite = np.where(np.isfinite(lateness), lateness, 1e6)
    stats = [r["stats"] for r in results]
    slots = sum(s["frames_out"] for s in stats)
    repeated = sum(s["frames_skipped"] for s in stats) / max(1, slots)
    after_start = [flag for r in results for flag in r["skipped_after_start"]]
    p95 = float(np.percentile(finite, 95))
    step_batches = scheduler.batches - batches
    return {
        "sessions": count,
        "frame_lateness_ms": common.percentiles(finite),
        "late_fraction": float((finite > LATENESS_LIMIT_MS).mean()),
        "repeated_fraction": repeated,
        "repeated_fraction_after_start": sum(after_start) / max(1, len(after_start)),
        "output_slots": slots,
        "chunks_skipped": sum(s["chunks_skipped"] for s in stats),
        "deadlines_missed": sum(s["deadlines_missed"] for s in stats),
        "batches": step_batches,
        "mean_batch_size": (scheduler.chunks_rendered - chunks) / step_batches if step_batches else 0.0,
        "deferred_chunks": scheduler.deferred - deferred,
        "rendered_frames_per_s": sum(r["rendered_per_s"] for r in results),
        "rendered_frames_per_s_per_session": [round(r["rendered_per_s"], 2) for r in results],
        "real_time": bool(repeated <= REPEATED_LIMIT and p95 <= LATENESS_LIMIT_MS),
        "real_time_p95_lateness": bool(p95 <= LATENESS_LIMIT_MS),
    }


async def sweep(engine: AvatarEngine, max_sessions: int, seconds: float) -> list[dict[str, Any]]:
    """Steps of 1, 2, ... ``max_sessions`` sessions while either real-time criterion holds.

    One event loop for the whole sweep: the engine's render scheduler delivers a batch to the loop
    that started it, so a loop closed with a batch in flight would leave the scheduler waiting.
    """
    steps = []
    for count in range(1, max_sessions + 1):
        step = await run_sessions(engine, count, seconds)
        await asyncio.sleep(0.1)
        steps.append(step)
        lateness = step["frame_lateness_ms"]
        print(
            f"  {count} session(s): {step['rendered_frames_per_s']:.1f} rendered frames/s, "
            f"lateness p50/p95/p99 {lateness['p50']:.0f}/{lateness['p95']:.0f}/{lateness['p99']:.0f} ms, "
            f"{100 * step['repeated_fraction']:.1f}% repeated, mean batch {step['mean_batch_size']:.2f}"
            f"{'' if step['real_time'] else ' — not real time'}",
            flush=True,
        )
        if not (step["real_time"] or step["real_time_p95_lateness"]):
            break
    return steps


def _leading(steps: list[dict[str, Any]], key: str) -> int:
    """The largest session count up to which every step met ``key``."""
    count = 0
    for step in steps:
        if not step[key]:
            break
        count = step["sessions"]
    return count


def measure_one(
    args: argparse.Namespace, avatar: Path, batching: str, chunk: int | None, peak: dict[str, Any]
) -> dict[str, Any]:
    """One preset avatar × batching mode × chunk size: saturated frames/s and the session sweep."""
    max_batch = args.max_sessions if batching == "batched" else 1
    engine = AvatarEngine.load(avatar, args.backend, stream_settings(args, chunk), max_batch=max_batch)
    try:
        shape = engine.backend.shape
        preset = engine.bundle.config.preset
        bound = ceiling(frame_cost(preset, shape.chunk_frames), peak)["ceiling_fps"]
        batches = sorted({b for b in SATURATED_BATCHES if b <= max_batch} | {max_batch})
        saturated = {b: saturated_frames_per_s(engine, b, args.saturated_frames) for b in batches}
        best = max(saturated, key=lambda b: saturated[b])
        row: dict[str, Any] = {
            "preset": preset,
            "avatar": str(avatar),
            "avatar_name": engine.bundle.manifest.name,
            "batching": batching,
            "max_batch": max_batch,
            "backend": engine.backend.name,
            "chunk_frames": shape.chunk_frames,
            "past_frames": shape.past_frames,
            "pipeline_delay_ms": engine.latency_ms,
            "saturated_frames_per_s": saturated[1],
            "saturated_frames_per_s_by_batch": {str(b): fps for b, fps in saturated.items()},
            "best_saturated_batch": best,
            "ceiling_frames_per_s": bound,
            "achieved_over_ceiling": saturated[1] / bound,
            "best_achieved_over_ceiling": saturated[best] / bound,
        }
        by_batch = ", ".join(f"B={b}: {fps:.1f}" for b, fps in saturated.items())
        print(
            f"{preset} {batching} (max_batch {max_batch}) {row['backend']} C={shape.chunk_frames}: "
            f"saturated frames/s {by_batch} (ceiling {bound:.1f}, best {100 * saturated[best] / bound:.0f}%)",
            flush=True,
        )
        row["sessions"] = asyncio.run(sweep(engine, args.max_sessions, args.seconds))
        row["max_real_time_sessions"] = _leading(row["sessions"], "real_time")
        row["max_sessions_p95_lateness"] = _leading(row["sessions"], "real_time_p95_lateness")
    finally:
        engine.close()
    return row


def avatars(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(preset, bundle) of every avatar to measure, in ``--presets`` order.

    Raises:
        InputError: an unknown preset, or ``--avatar`` is not an avatar.
    """
    given: dict[str, Path] = {}
    if args.avatar is not None:
        given[read_manifest(args.avatar).model.preset] = args.avatar
    presets = args.presets if args.presets is not None else (list(given) or list(DEFAULT_PRESETS))
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise InputError(f"unknown preset(s) {', '.join(unknown)}; choose from {', '.join(sorted(PRESETS))}")
    stray = [preset for preset in given if preset not in presets]
    if stray:
        raise InputError(f"--avatar {args.avatar} is a {stray[0]} avatar, which --presets leaves out")
    found = []
    for preset in presets:
        if preset in given:
            found.append((preset, given[preset]))
        elif preset == BUNDLED_PRESET:
            bundled = common.bench_avatar(None)
            if read_manifest(bundled).model.preset != BUNDLED_PRESET:
                raise InputError(f"the bundled avatar is no longer {BUNDLED_PRESET}: update BUNDLED_PRESET")
            found.append((preset, bundled))
        else:
            found.append((preset, preset_avatar(preset, args.avatar_cache or args.results / "avatars")))
    return found


def measure(
    args: argparse.Namespace, bundles: list[tuple[str, Path]], peak: dict[str, Any]
) -> list[dict[str, Any]]:
    rows = []
    for _, avatar in bundles:
        for chunk in args.chunks or [None]:
            for batching in args.batching:
                rows.append(measure_one(args, avatar, batching, chunk, peak))
    return rows


def markdown(result: dict[str, Any]) -> str:
    peak = result["peak"]
    lines = [
        f"# throughput — {result['date']}",
        "",
        f"{common.machine_line(result)}. Measured peak {peak['gflop_per_s_best']:.0f} GFLOP/s, "
        f"{peak['gbyte_per_s_best']:.1f} GB/s. Sessions: {result['seconds']:.0f} s each step. "
        f"**Real time** = at most {100 * REPEATED_LIMIT:.0f}% of output slots repeat an earlier image "
        f"(Σ frames_skipped / Σ frames_out of the sessions) and p95 frame lateness ≤ "
        f"{LATENESS_LIMIT_MS:.0f} ms; the older criterion (p95 lateness alone) in brackets. Unbatched: "
        "max_batch 1; batched: max_batch = max sessions. Saturated: B unpaced streams rendered together, "
        "frames/s of all of them; ceiling: the networks at this machine's peak (batch 1). Presets other "
        f"than the bundled `{BUNDLED_PRESET}` run untrained networks (speed only).",
        "",
    ]
    columns = ["preset", "backend", "C", "batching", "saturated frames/s by B", "ceiling frames/s"]
    columns += ["achieved/ceiling (B=1 → best)", "real-time sessions [p95 only]"]
    cells = [
        [
            row["preset"],
            row["backend"],
            row["chunk_frames"],
            f"{row['batching']} ({row['max_batch']})",
            ", ".join(f"{b}: {fps:.1f}" for b, fps in row["saturated_frames_per_s_by_batch"].items()),
            f"{row['ceiling_frames_per_s']:.1f}",
            f"{100 * row['achieved_over_ceiling']:.0f}% → {100 * row['best_achieved_over_ceiling']:.0f}%",
            f"{row['max_real_time_sessions']} [{row['max_sessions_p95_lateness']}]",
        ]
        for row in result["rows"]
    ]
    lines += common.markdown_table(columns, "llrlrrrr", cells)
    for (preset, chunk), pair in _pairs(result["rows"]).items():
        lines += ["", f"## {preset}, C = {chunk}: sessions, unbatched vs batched", ""]
        modes = [mode for mode in BATCHING[::-1] if mode in pair]
        columns = ["sessions"]
        for mode in modes:
            columns += [f"{mode}: lateness p50/p95/p99 ms", "repeated (after start)", "frames/s"]
            columns += ["mean batch"] if mode == "batched" else []
        counts = sorted({s["sessions"] for mode in modes for s in pair[mode]["sessions"]})
        table = []
        for count in counts:
            cells_row: list[object] = [count]
            for mode in modes:
                step = next((s for s in pair[mode]["sessions"] if s["sessions"] == count), None)
                extra = 1 if mode == "batched" else 0
                if step is None:
                    cells_row += ["—"] * (3 + extra)
                    continue
                mark = "" if step["real_time"] else (" (p95 ok)" if step["real_time_p95_lateness"] else " ✗")
                cells_row += [
                    common.percentile_text(step["frame_lateness_ms"]) + mark,
                    f"{100 * step['repeated_fraction']:.1f}% "
                    f"({100 * step['repeated_fraction_after_start']:.1f}%)",
                    f"{step['rendered_frames_per_s']:.0f}",
                ]
                cells_row += [f"{step['mean_batch_size']:.2f}"] if extra else []
            table.append(cells_row)
        align = "r" + "".join("lrr" + ("r" if mode == "batched" else "") for mode in modes)
        lines += common.markdown_table(columns, align, table)
    lines += [
        "",
        "✗: not real time by either criterion; (p95 ok): only the p95-lateness criterion holds. "
        "Repeated: share of output slots without their own fresh frame, the whole session (the "
        "criterion); in brackets from the first slot with input on. Frames/s: slots showing their own "
        "fresh frame, all sessions.",
    ]
    return "\n".join(lines) + "\n"


def _pairs(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, dict[str, Any]]]:
    """Rows grouped by (preset, chunk), then by batching mode."""
    pairs: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for row in rows:
        pairs.setdefault((row["preset"], row["chunk_frames"]), {})[row["batching"]] = row
    return pairs


def plot(result: dict[str, Any], path: Path) -> None:
    top = max((row["sessions"][-1]["sessions"] for row in result["rows"] if row["sessions"]), default=1)
    with common.figure(path, 1, 3, figsize=(15, 4)) as (left, middle, right):
        for row in result["rows"]:
            label = f"{row['preset']} C={row['chunk_frames']} {row['batching']}"
            style = "-" if row["batching"] == "batched" else "--"
            counts = [s["sessions"] for s in row["sessions"]]
            left.plot(
                counts,
                [s["rendered_frames_per_s"] for s in row["sessions"]],
                marker="o",
                linestyle=style,
                label=label,
            )
            middle.plot(
                counts,
                [min(s["frame_lateness_ms"]["p95"], 1000) for s in row["sessions"]],
                marker="o",
                linestyle=style,
                label=label,
            )
            right.plot(
                counts,
                [100 * s["repeated_fraction"] for s in row["sessions"]],
                marker="o",
                linestyle=style,
                label=label,
            )
        left.plot(
            [1, top], [FPS, FPS * top], color="grey", linestyle=":", linewidth=1, label="25 fps × sessions"
        )
        left.set(title="rendered frames/s, all sessions", xlabel="concurrent sessions", ylabel="frames/s")
        middle.axhline(LATENESS_LIMIT_MS, color="grey", linestyle=":", linewidth=1, label="one frame")
        middle.set(title="frame lateness p95", xlabel="concurrent sessions", ylabel="ms (capped at 1000)")
        right.axhline(100 * REPEATED_LIMIT, color="grey", linestyle=":", linewidth=1, label="real-time limit")
        right.set(title="output slots repeating an image", xlabel="concurrent sessions", ylabel="%")
        for axis in (left, middle, right):
            axis.set_xticks(range(1, top + 1))
            axis.legend(fontsize=7)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_avatar_arguments(parser)
    parser.add_argument(
        "--presets",
        nargs="+",
        help=f"presets to measure (default: {' '.join(DEFAULT_PRESETS)}, or --avatar's alone); "
        f"{BUNDLED_PRESET} is the bundled default avatar, others untrained benchmark avatars",
    )
    parser.add_argument("--batching", nargs="+", choices=BATCHING, default=list(BATCHING))
    parser.add_argument(
        "--avatar-cache", type=Path, help="folder of the generated preset avatars (default RESULTS/avatars)"
    )
    parser.add_argument("--backend", default="onnxruntime-cpu")
    parser.add_argument("--chunks", nargs="+", type=int, help="chunk sizes (default: each avatar's own)")
    parser.add_argument("--max-sessions", type=int, default=8, help="also the batched mode's max_batch")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each session-count step")
    parser.add_argument("--saturated-frames", type=int, default=200, help="frames timed per batch size")
    parser.add_argument(
        "--quick", action="store_true", help="the first preset, one chunk size, up to 2 sessions, 1.2 s"
    )
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.max_sessions < 1:
        parser.error("--max-sessions must be at least 1")
    if args.quick:
        if args.presets is not None:
            args.presets = args.presets[:1]
        args.chunks = args.chunks[:1] if args.chunks else None
        args.max_sessions, args.seconds, args.saturated_frames = min(args.max_sessions, 2), 1.2, 10
    device = "cuda" if "cuda" in args.backend or args.backend == "tensorrt" else "cpu"
    if args.quick and args.presets is None and args.avatar is None:
        args.presets = [DEFAULT_PRESETS[0]]
    bundles = avatars(args)
    peak = measure_peak(device, seconds=0.3 if args.quick else 2.0)
    rows = measure(args, bundles, peak)
    common.report(
        "throughput",
        args,
        markdown,
        plot,
        presets=[preset for preset, _ in bundles],
        avatars={preset: str(path) for preset, path in bundles},
        batching=args.batching,
        seconds=args.seconds,
        peak=peak,
        rows=rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
