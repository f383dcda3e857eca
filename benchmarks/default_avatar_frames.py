"""Four moments of two avatars side by side, one PNG: speech peak, mid-opening, closed, pause.

Both avatars are driven by the same project-made speech (the synthetic voice, seed 7, 3 s, then
1.5 s of silence; no recording of anyone) through the live streaming pipeline, AI mark on. The
moments are picked once, from the second avatar's mouth (the inner-lip area it renders), and the
same frame numbers are shown for both: the widest opening during speech, the frame nearest half
way between rest and that opening while the mouth opens, the most closed frame during speech, and
the middle of the pause.

    python benchmarks/default_avatar_frames.py --old OLD_AVATAR [--new NEW_AVATAR] [--out PNG]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.bundle import DEFAULT_AVATAR_DIR, read_manifest
from engines.timebase import FPS, SAMPLE_RATE_HZ
from offline_training.synthetic.speech import synthesize_speech
from realtime.engine import AvatarEngine
from realtime.file_stream import stream_file

SPEECH_S, PAUSE_S, SEED = 3.0, 1.5, 7
MOMENTS = ("speech peak", "mid-opening", "closed", "pause")


def driving_audio() -> np.ndarray:
    """(S,) 16 kHz: 3 s of the synthetic voice, then 1.5 s of silence."""
    speech = synthesize_speech(SEED, SPEECH_S).audio.astype(np.float32)
    return np.concatenate([speech, np.zeros(int(PAUSE_S * SAMPLE_RATE_HZ), np.float32)])


def render(avatar: Path, audio: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The streamed frames (H, W, 3) and their (T,) inner-lip areas."""
    engine = AvatarEngine.load(avatar)
    try:
        frames = [frame for frame in stream_file(engine, audio) if frame.image is not None]
    finally:
        engine.close()
    return [frame.image for frame in frames if frame.image is not None], np.array(
        [frame.inner_lip_area for frame in frames]
    )


def pick_moments(areas: np.ndarray) -> list[int]:
    """Frame indices of the four moments from (T,) inner-lip areas."""
    speech = np.arange(int(SPEECH_S * FPS))
    rest = float(np.median(areas[int((SPEECH_S + 0.5) * FPS) :]))
    peak = int(speech[np.argmax(areas[speech])])
    rising = [t for t in speech[1:] if areas[t] > areas[t - 1]]
    half = rest + 0.5 * (areas[peak] - rest)
    mid = int(min(rising, key=lambda t: abs(areas[t] - half))) if rising else peak
    closed = int(speech[5:][np.argmin(areas[speech[5:]])])
    pause = int((SPEECH_S + PAUSE_S / 2) * FPS)
    return [peak, mid, closed, pause]


def labelled(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 22), (0, 0, 0), -1)
    cv2.putText(out, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the avatar shown in the top row")
    parser.add_argument(
        "--new", type=Path, default=DEFAULT_AVATAR_DIR, help="the bottom row (default: bundled)"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/default-avatar-frames.png"))
    args = parser.parse_args(argv)
    audio = driving_audio()
    old_frames, _ = render(args.old, audio)
    new_frames, new_areas = render(args.new, audio)
    moments = pick_moments(new_areas)
    rows = []
    for name, frames in (("old", old_frames), ("new", new_frames)):
        preset = read_manifest(args.old if name == "old" else args.new).model.preset
        rows.append(
            np.concatenate(
                [
                    labelled(frames[t], f"{name} ({preset}): {moment}, frame {t}")
                    for moment, t in zip(MOMENTS, moments, strict=True)
                ],
                axis=1,
            )
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    print(f"default_avatar_frames: {args.out} (frames {moments})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
