"""Speed of ``stableface prepare``: frames per second, whole and per stage.

Runs the dataset builder on every ``../shared/data/real/hdtf/*.mp4`` clip (or the videos given)
and reports, per clip and over all clips, the frames per second of the whole run and of each
stage (decode, track, face model, crop, face shape, mouth mask, image writes, ...), plus the
per-frame latency distribution of the per-frame stages (p50/p95/p99 in ms). Writes
``results/prepare_speed-<date>.json`` and a Markdown summary beside it.

    python benchmarks/prepare_speed.py [VIDEO ...] [--size 256] [--tracker mediapipe] [--quick]

The target is the whole of ``prepare`` at >= 25 frames/s (faster than real time) at 256x256.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402
from engines.errors import InputError  # noqa: E402
from engines.timebase import FPS  # noqa: E402
from offline_training.dataset.builder import prepare_dataset  # noqa: E402
from offline_training.dataset.settings import PrepareSettings  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
PER_FRAME_STAGES = ("decode_video", "track", "crop", "face_shape", "mouth_mask", "write_images")
TARGET_FPS = float(FPS)  # faster than real time


def _synthetic_video(folder: Path) -> Path:
    from offline_training.synthetic import generate_talking_face, write_talking_face

    path = folder / "synthetic.mp4"
    write_talking_face(path, generate_talking_face(seed=0, duration_s=4.0, size=256))
    return path


def measure(video: Path, size: int, tracker: str, tracker_model: Path | None, audio: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        prepared = prepare_dataset(
            PrepareSettings(
                video=video,
                audio=audio,
                out=Path(tmp) / "ds",
                render_size=size,
                tracker=tracker,
                tracker_model=tracker_model,
                show_progress=False,
            )
        )
        wall = time.perf_counter() - start
    frames = prepared.manifest.num_source_frames
    samples_ms = {
        name: [1000.0 * value for value in values]
        for name, values in prepared.stage_samples_s.items()
        if name in PER_FRAME_STAGES
    }
    stages = {
        name: {"seconds": s, "frames_per_s": frames / s if s > 0 else None}
        for name, s in prepared.stage_seconds.items()
    }
    return {
        "video": video.name,
        "frames": frames,
        "wall_s": wall,
        "frames_per_s": frames / wall,
        "stages": stages,
        "per_call_ms": samples_ms,
    }


def summarise(runs: list[dict]) -> dict:
    fps = np.array([run["frames_per_s"] for run in runs])
    total_frames = sum(run["frames"] for run in runs)
    stage_names = sorted({name for run in runs for name in run["stages"]})
    stages: dict[str, dict] = {}
    for name in stage_names:
        seconds = sum(run["stages"].get(name, {"seconds": 0.0})["seconds"] for run in runs)
        stats: dict[str, float] = {"ms_per_frame": 1000.0 * seconds / total_frames}
        calls = np.concatenate([np.asarray(run["per_call_ms"].get(name, []), dtype=float) for run in runs])
        if len(calls):
            stats["calls"] = float(len(calls))
            stats.update({f"ms_per_call_{q}": value for q, value in common.percentiles(calls).items()})
        stages[name] = stats
    return {
        "clips": len(runs),
        "frames": int(total_frames),
        "frames_per_s_overall": float(total_frames / sum(run["wall_s"] for run in runs)),
        "frames_per_s_by_clip": {
            "min": float(fps.min()),
            "p50": float(np.percentile(fps, 50)),
            "max": float(fps.max()),
        },
        "stages": stages,
        "target_frames_per_s": TARGET_FPS,
        "meets_target": bool(fps.min() >= TARGET_FPS),
    }


def markdown(result: dict) -> str:
    summary = result["summary"]
    lines = [
        f"# prepare speed — {result['date']}",
        "",
        f"Machine: {result['machine']['processor']} ({result['machine']['cpus']} CPUs), Python "
        f"{result['machine']['python']}, commit {result['commit']}, "
        f"tracker {result['tracker']}, size {result['size']}.",
        "",
        f"Overall: **{summary['frames_per_s_overall']:.1f} frames/s** over {summary['frames']} frames in "
        f"{summary['clips']} clips (target {TARGET_FPS:g}; slowest clip "
        f"{summary['frames_per_s_by_clip']['min']:.1f}: {'met' if summary['meets_target'] else 'NOT met'}).",
        "",
    ]
    lines += common.markdown_table(
        ["clip", "frames", "frames/s (whole prepare, wall clock)"],
        "lrr",
        [[run["video"], run["frames"], f"{run['frames_per_s']:.1f}"] for run in result["runs"]],
    )
    lines += [
        "",
        "Per stage: total ms per frame, and the per-call distribution for stages run once per frame "
        "(decode_video runs twice per frame: tracking pass and rendering pass).",
        "",
    ]
    cells = [
        [name, f"{stats['ms_per_frame']:.2f}"]
        + [f"{stats[f'ms_per_call_{q}']:.2f}" if "calls" in stats else "—" for q in ("p50", "p95", "p99")]
        for name, stats in sorted(summary["stages"].items(), key=lambda item: -item[1]["ms_per_frame"])
    ]
    lines += common.markdown_table(["stage", "ms/frame", "p50 ms/call", "p95", "p99"], "lrrrr", cells)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "videos", nargs="*", type=Path, help="videos (default: ../shared/data/real/hdtf/*.mp4)"
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--tracker", default="mediapipe")
    parser.add_argument("--tracker-model", type=Path)
    parser.add_argument("--quick", action="store_true", help="one short synthetic clip (smoke test)")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            videos = [_synthetic_video(Path(tmp))]
        else:
            videos = args.videos or sorted((SHARED / "real" / "hdtf").glob("*.mp4"))
        if not videos:
            raise InputError(f"no videos: give some, or provide {SHARED / 'real' / 'hdtf'}")
        runs = []
        for video in videos:
            run = measure(video, args.size, args.tracker, args.tracker_model, None)
            print(f"{video.name}: {run['frames']} frames, {run['frames_per_s']:.1f} frames/s", flush=True)
            runs.append(run)
    common.report(
        "prepare_speed",
        args,
        markdown,
        tracker=args.tracker,
        size=args.size,
        runs=runs,
        summary=summarise(runs),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
