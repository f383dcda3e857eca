"""A synthetic talking face: the astronaut portrait mouthing generated speech."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engines.files import atomic_output
from engines.media.encode import write_mp4, write_wav
from engines.timebase import FPS, SAMPLE_RATE_HZ
from offline_training.synthetic.face_animation import (
    astronaut,
    frame_from_portrait,
    head_motion_track,
    open_mouth,
)
from offline_training.synthetic.speech import synthesize_speech


@dataclass(frozen=True)
class SyntheticClip:
    """A generated talking-face clip.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB.
        audio: (S,) float32 mono at ``sample_rate_hz``, S = T / fps seconds.
        drawn_opening: (T,) float32 in [0, 1], how far the generator opened each frame's mouth
            (0 closed, 1 wide open).
        fps: frame rate.
        sample_rate_hz: audio rate.
    """

    frames: npt.NDArray[np.uint8]
    audio: npt.NDArray[np.float32]
    drawn_opening: npt.NDArray[np.float32]
    fps: float
    sample_rate_hz: int


def generate_talking_face(seed: int, duration_s: float, size: int = 256, fps: float = FPS) -> SyntheticClip:
    """Make a clip deterministically from ``seed``.

    Args:
        seed: random seed for the voice, the syllables and the head motion.
        duration_s: clip length (rounded down to whole frames).
        size: output frame side in pixels.
        fps: frame rate.

    Returns:
        The clip.
    """
    frames_count = int(duration_s * fps + 1e-6)
    speech = synthesize_speech(seed, frames_count / fps, SAMPLE_RATE_HZ)
    opening = speech.opening_per_frame(fps)[:frames_count]
    motion = head_motion_track(seed, frames_count, fps)
    portrait = astronaut()
    frames = np.stack(
        [
            frame_from_portrait(open_mouth(portrait, float(o)), m, size)
            for o, m in zip(opening, motion, strict=True)
        ]
    )
    return SyntheticClip(
        frames=frames, audio=speech.audio, drawn_opening=opening, fps=fps, sample_rate_hz=SAMPLE_RATE_HZ
    )


def write_talking_face(path: str | Path, clip: SyntheticClip, audio_path: str | Path | None = None) -> None:
    """Write the clip as an H.264 MP4, with its audio inside (AAC) or, given ``audio_path``, in a WAV.

    Raises:
        OutputError: the video cannot be written.
    """
    if audio_path is None:
        with atomic_output(Path(path)) as partial:
            write_mp4(partial, clip.frames, clip.fps, clip.audio, clip.sample_rate_hz)
        return
    with atomic_output(Path(path)) as partial, atomic_output(Path(audio_path)) as audio_partial:
        write_mp4(partial, clip.frames, clip.fps)
        write_wav(audio_partial, clip.audio, clip.sample_rate_hz)
