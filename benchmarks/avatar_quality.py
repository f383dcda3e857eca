"""How an avatar looks and moves when real speech it never heard drives it, beside real footage.

For every speech recording (default ``../shared/data/speech/*.wav``) the avatar renders the speech
through the live streaming pipeline (``realtime.file_stream``, the frames a viewer gets) and
``stableface eval``'s measures read the frames back with the MediaPipe mesh: MSI of lips and jaw,
the lip-sync measure (offset, score, confidence), CPBD of the whole frame and of the mouth box. The
avatar's own reference frames (what its renderer was trained to reproduce) give the sharpness to
compare with, and the real clips (default ``../shared/data/real/*/*.mp4``, each with its own sound)
give MSI measured the same way.

The default avatar's targets (issue 19): lips at least as stable as the least stable real clip,
neither lips nor jaw more than 25% above the most stable one, |offset| ≤ 40 ms with score ≥ 0.5 on
every recording, mouth-box CPBD ≥ 0.8x the reference frames'.

Writes ``results/avatar_quality-<date>[-<label>].json`` and ``.md``; ``--quick`` drives the
avatar with two generated utterances and skips the real clips (for the tests).

    python benchmarks/avatar_quality.py [--avatar DIR] [--speech WAV ...] [--no-real] [--label NAME]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks.sync_validation import NEAR_CLEAN
from engines.bundle import DEFAULT_AVATAR_DIR
from engines.errors import InputError
from engines.geometry.trackers import create_tracker
from engines.media.decode import load_audio
from engines.timebase import FPS, SAMPLE_RATE_HZ
from offline_training.evaluation.mouth_tracks import video_av_sync
from offline_training.evaluation.msi import track_normalised
from offline_training.evaluation.video_report import (
    Footage,
    VideoReport,
    evaluate_footage,
    evaluate_video,
    mouth_box_cpbd,
)
from realtime.engine import AvatarEngine
from realtime.file_stream import stream_file

SHARED = common.REPO.parent / "shared" / "data"
MAX_OFFSET_MS = 40.0
MIN_SCORE = 0.5
MSI_CEILING = 1.25  # of the most stable real clip
MIN_SHARPNESS_RATIO = 0.8


def _row(name: str, report: VideoReport) -> dict[str, Any]:
    return {
        "name": name,
        "frames": report.frames,
        "msi_lip": report.msi_lip,
        "msi_jaw": report.msi_jaw,
        "cpbd": report.cpbd,
        "mouth_cpbd": report.mouth_cpbd,
        "offset_ms": report.av_offset_ms,
        "score": report.av_correlation,
        "confidence": report.av_confidence,
        "reliable": report.av_reliable,
    }


def driven(avatar: Path, speech: list[tuple[str, np.ndarray]]) -> list[dict[str, Any]]:
    """The avatar driven by each (name, 16 kHz audio) through the streaming pipeline, measured.

    Where the near-clean recording of the noisy recordings' utterance is among ``speech``, each
    noisy recording's row also has ``speech_score``: the mouth's sync score against that recording,
    i.e. whether it follows the speech under the noise or the noise.
    """
    near_clean = dict(speech).get(NEAR_CLEAN)
    engine = AvatarEngine.load(avatar)
    tracker = create_tracker("mediapipe")
    rows = []
    try:
        for name, audio in speech:
            images = np.stack(
                [frame.image for frame in stream_file(engine, audio) if frame.image is not None]
            )
            report = evaluate_footage(
                Footage.from_array(name, images, FPS), tracker, speech=audio, speech_name=name
            )
            row = _row(name, report)
            if near_clean is not None and name.startswith("noisy_audio_"):
                under_noise = video_av_sync(iter(images), near_clean, SAMPLE_RATE_HZ, FPS, tracker)
                row["speech_score"] = under_noise.correlation
                row["speech_confidence"] = under_noise.confidence
                row["speech_reliable"] = under_noise.reliable
            rows.append(row)
            print(f"avatar_quality: {name}: MSI lip {report.msi_lip:.3f}", file=sys.stderr)
    finally:
        tracker.close()
        engine.close()
    return rows


def reference_sharpness(avatar: Path) -> float:
    """Mouth-box CPBD of the avatar's own reference frames (full frames, as the stream pastes into)."""
    engine = AvatarEngine.load(avatar)
    tracker = create_tracker("mediapipe")
    try:
        frames = np.stack([engine.frames.full_frame(index) for index in range(engine.frames.frames)])
        tracks = track_normalised(iter(frames), tracker)
        return mouth_box_cpbd(iter(frames), tracks)
    finally:
        tracker.close()
        engine.close()


def real_clips(paths: list[Path]) -> list[dict[str, Any]]:
    """Each real clip measured with its own sound (a ``.wav`` beside a silent video)."""
    tracker = create_tracker("mediapipe")
    rows = []
    try:
        for path in paths:
            beside = path.with_suffix(".wav")
            try:
                report = evaluate_video(path, tracker, audio=beside if beside.is_file() else None)
            except InputError as error:
                print(f"avatar_quality: skipping {path.name}: {error}", file=sys.stderr)
                continue
            rows.append(_row(path.stem, report))
    finally:
        tracker.close()
    return rows


def verdicts(result: dict[str, Any]) -> dict[str, bool | None]:
    """Each target met or not (None where the real clips were not measured)."""
    rows, real = result["driven"], result["real"]
    sync = all(
        row["reliable"] and abs(row["offset_ms"]) <= MAX_OFFSET_MS and row["score"] >= MIN_SCORE
        for row in rows
    )
    sharp = min(row["mouth_cpbd"] for row in rows) >= MIN_SHARPNESS_RATIO * result["reference_mouth_cpbd"]
    if not real:
        return {"sync": sync, "sharpness": sharp, "lips_stable_enough": None, "not_frozen": None}
    least_lip = min(row["msi_lip"] for row in real)
    most_lip, most_jaw = max(row["msi_lip"] for row in real), max(row["msi_jaw"] for row in real)
    return {
        "sync": sync,
        "sharpness": sharp,
        "lips_stable_enough": min(row["msi_lip"] for row in rows) >= least_lip,
        "not_frozen": max(row["msi_lip"] for row in rows) <= MSI_CEILING * most_lip
        and max(row["msi_jaw"] for row in rows) <= MSI_CEILING * most_jaw,
    }


def markdown(result: dict[str, Any]) -> str:
    def cells(row: dict[str, Any]) -> list[str]:
        offset = (
            "—" if row["offset_ms"] is None else f"{row['offset_ms']:+.0f}{'' if row['reliable'] else '?'}"
        )
        score = "—" if row["score"] is None else f"{row['score']:.2f} ({row['confidence']:.1f})"
        return [
            row["name"],
            str(row["frames"]),
            f"{row['msi_lip']:.3f}",
            f"{row['msi_jaw']:.3f}",
            offset,
            score,
            f"{row['cpbd']:.3f}",
            f"{row['mouth_cpbd']:.3f}",
        ]

    columns = [
        "recording",
        "frames",
        "MSI lip",
        "MSI jaw",
        "offset ms",
        "score (conf.)",
        "CPBD",
        "mouth CPBD",
    ]
    lines = [
        f"# avatar quality — {result['date']}",
        "",
        common.machine_line(result),
        f"Avatar `{result['avatar']}` (preset {result['preset']}), driven through the streaming pipeline; "
        "MediaPipe mesh, MSI in the paper's 256 px box; `?` = the sync measure calls it unreliable.",
        f"Reference frames' mouth CPBD: {result['reference_mouth_cpbd']:.3f}.",
        "",
        "Targets: "
        + ", ".join(
            f"{name} {'met' if ok else 'missed'}" for name, ok in result["verdicts"].items() if ok is not None
        ),
        "",
        "## Driven by speech it never heard",
        "",
        *common.markdown_table(columns, "lrrrrrrr", [cells(row) for row in result["driven"]]),
    ]
    under = [row for row in result["driven"] if row.get("speech_score") is not None]
    if under:
        lines += [
            "",
            f"The noisy recordings are one utterance; each one's mouth scored against `{NEAR_CLEAN}` "
            "(the speech under the noise, 20 dB over its own): does the mouth follow the speech or "
            "the noise?",
            "",
            *common.markdown_table(
                ["recording", "score (conf.), its own sound", "score (conf.), the speech under it"],
                "lrr",
                [
                    [
                        row["name"],
                        f"{row['score']:.2f} ({row['confidence']:.1f})",
                        f"{row['speech_score']:.2f} ({row['speech_confidence']:.1f})"
                        f"{'' if row['speech_reliable'] else '?'}",
                    ]
                    for row in under
                ],
            ),
        ]
    if result["real"]:
        lines += [
            "",
            "## Real clips, their own sound",
            "",
            *common.markdown_table(columns, "lrrrrrrr", [cells(row) for row in result["real"]]),
        ]
    return "\n".join(lines) + "\n"


def _quick_speech() -> list[tuple[str, np.ndarray]]:
    from offline_training.synthetic.speech import synthesize_speech

    return [(f"generated-{seed}", synthesize_speech(seed, 8.0).audio) for seed in (1, 2)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--avatar", type=Path, default=DEFAULT_AVATAR_DIR)
    parser.add_argument("--speech", type=Path, nargs="*", help="default: every .wav of ../shared/data/speech")
    parser.add_argument("--no-real", action="store_true", help="skip the real clips")
    parser.add_argument("--quick", action="store_true", help="two generated utterances, no real clips")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        speech = _quick_speech()
    else:
        paths = args.speech or sorted((SHARED / "speech").glob("*.wav"))
        if not paths:
            print(f"avatar_quality: no speech given and none in {SHARED / 'speech'}", file=sys.stderr)
            return 1
        speech = [(path.stem, load_audio(path)) for path in paths]
    real = [] if args.quick or args.no_real else real_clips(sorted((SHARED / "real").glob("*/*.mp4")))
    from engines.bundle import read_manifest

    result: dict[str, Any] = {
        "avatar": str(args.avatar),
        "preset": read_manifest(args.avatar).model.preset,
        "driven": driven(args.avatar, speech),
        "reference_mouth_cpbd": reference_sharpness(args.avatar),
        "real": real,
    }
    result["verdicts"] = verdicts(result)
    common.report("avatar_quality", args, markdown, **result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
