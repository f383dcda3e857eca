"""A blind subjective-study kit for the ablation (the paper's MOS study and Fig. 8 preferences).

Layout of the kit folder::

    clips/clip_NN.mp4   every model's render and the real video, with the speech, under blind names
    pairs/pair_NN.mp4   the full model beside each variant (sides drawn at random), for preferences
    order.csv           the presentation order (shuffled), what to ask for each file
    ratings.csv         an empty sheet for one rater (copy it per rater)
    key.csv             which model is behind each file: for the analyst only, never for raters
    README.md           instructions, the grades and the three questions of the paper
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from engines.files import atomic_directory
from engines.media.encode import write_mp4
from engines.timebase import SAMPLE_RATE_HZ

ImageRGB = npt.NDArray[np.uint8]
MIN_SIDE = 256
KIT_SEED = 20221118
REAL = "real"
QUESTIONS = (
    ("motion_stability", "Are the motions around the lips and jaw stable across frames?"),
    ("lip_sync", "How does the motion of the lips match the speech in lip-audio accuracy?"),
    ("realness", "Does the video look real in your mind?"),
)
GRADES = "5 Very Good, 4 Good, 3 Average, 2 Poor, 1 Very Poor"


def write_mos_kit(
    folder: Path,
    renders: dict[str, ImageRGB],
    real: ImageRGB,
    speech: npt.NDArray[np.float32],
    fps: float,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
) -> Path:
    """Write the kit into ``folder`` (replaced whole; it appears only when complete).

    Args:
        renders: (T, S, S, 3) uint8 frames by model name (``"full"`` enables the pairs).
        real: (T, S, S, 3) the real frames.
        speech: (S,) float32 speech under the clips.
        fps: frame rate.
    """
    rng = np.random.default_rng(KIT_SEED)
    with atomic_directory(folder, replace=True) as staging:
        (staging / "clips").mkdir()
        (staging / "pairs").mkdir()
        sources = {**renders, REAL: real}
        names = list(sources)
        shuffled = [names[i] for i in rng.permutation(len(names))]
        key_rows: list[list[str]] = []
        order: list[list[str]] = []
        for number, name in enumerate(shuffled, start=1):
            file = f"clips/clip_{number:02d}.mp4"
            _encode(staging / file, _enlarged(sources[name]), speech, fps, sample_rate_hz)
            key_rows.append([file, name, ""])
            order.append([file, "rate each question 1-5"])
        if "full" in renders:
            others = [name for name in renders if name != "full"]
            for number, index in enumerate(rng.permutation(len(others)), start=1):
                other = others[index]
                full_left = bool(rng.integers(2))
                left, right = ("full", other) if full_left else (other, "full")
                file = f"pairs/pair_{number:02d}.mp4"
                frames = np.concatenate([_enlarged(renders[left]), _enlarged(renders[right])], axis=2)
                _encode(staging / file, frames, speech, fps, sample_rate_hz)
                key_rows.append([file, left, right])
                order.append([file, "for each question: left, right or same"])
        order_rows = [
            [str(position + 1), *order[i]] for position, i in enumerate(rng.permutation(len(order)))
        ]
        _csv(staging / "order.csv", ["position", "file", "task"], order_rows)
        _csv(staging / "key.csv", ["file", "model (left for pairs)", "right (pairs)"], key_rows)
        _csv(
            staging / "ratings.csv",
            ["file", *(key for key, _ in QUESTIONS), "comment"],
            [[row[1]] + [""] * (len(QUESTIONS) + 1) for row in order_rows],
        )
        (staging / "README.md").write_text(_readme(len(names), len(key_rows) - len(names)))
    return folder


def _enlarged(frames: ImageRGB) -> ImageRGB:
    """Frames scaled by a whole factor to at least 256 px, so raters see small renders."""
    factor = max(1, math.ceil(MIN_SIDE / frames.shape[1]))
    if factor == 1:
        return frames
    size = (frames.shape[2] * factor, frames.shape[1] * factor)
    return np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC) for frame in frames])


def _encode(path: Path, frames: ImageRGB, speech: npt.NDArray[np.float32], fps: float, rate: int) -> None:
    samples = int(round(len(frames) * rate / fps))
    write_mp4(path, iter(frames), fps, speech[:samples], rate)


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _readme(clips: int, pairs: int) -> str:
    questions = "\n".join(f"- **{key}**: {text}" for key, text in QUESTIONS)
    return f"""# Subjective study kit (blind)

{clips} clips (every model and the real video) and {pairs} side-by-side pairs (the full model beside
each variant, sides drawn at random). Give raters `clips/`, `pairs/`, `order.csv` and a copy of
`ratings.csv` each; **keep `key.csv` away from them** until the ratings are in.

Show the files in the order of `order.csv` (shuffle it again per rater if you like), with sound.
For each clip, grade every question: {GRADES}. For each pair, answer every question with left,
right or same. The questions (the paper's, section IV-A):

{questions}

As in the paper, show raters a few real and generated examples of each grade before they start, and
let them practise once. The mean opinion score of a model is the mean grade over raters and clips;
report it with its 95% confidence interval.
"""
