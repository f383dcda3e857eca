"""Writing media files: H.264 + AAC MP4 with PyAV, 16-bit PCM WAV with the standard library."""

from __future__ import annotations

import wave
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np
import numpy.typing as npt

from engines.errors import OutputError
from engines.timebase import SAMPLE_RATE_HZ

AAC_FRAME_SAMPLES = 1024


def write_mp4(
    path: str | Path,
    frames: Iterable[npt.NDArray[np.uint8]],
    fps: float,
    audio: npt.NDArray[np.float32] | None = None,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    crf: int = 18,
) -> int:
    """Encode frames (and optionally mono audio) into an MP4 file.

    Args:
        path: output file; its folder must exist.
        frames: (H, W, 3) uint8 RGB frames, all the same even size.
        fps: frame rate.
        audio: (S,) float32 mono samples in [-1, 1], or ``None`` for a silent file.
        sample_rate_hz: rate of ``audio``.
        crf: H.264 constant rate factor (lower is better quality).

    Returns:
        The number of video frames written.

    Raises:
        OutputError: the file cannot be created.
    """
    path = Path(path)
    try:
        container = av.open(str(path), mode="w")
    except (av.error.FFmpegError, OSError) as exc:
        raise OutputError(f"{path}: cannot write ({exc})") from exc
    count = 0
    with container:
        rate = Fraction(fps).limit_denominator(1001)
        video = container.add_stream("libx264", rate=rate)
        video.pix_fmt = "yuv420p"
        video.options = {"crf": str(crf), "preset": "veryfast"}
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream("aac", rate=sample_rate_hz)
            audio_stream.layout = "mono"
        for image in frames:
            if count == 0:
                video.width, video.height = int(image.shape[1]), int(image.shape[0])
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = count
            frame.time_base = Fraction(1, 1) / rate
            container.mux(video.encode(frame))
            count += 1
        container.mux(video.encode(None))
        if audio_stream is not None and audio is not None:
            _write_audio(container, audio_stream, audio, sample_rate_hz)
    return count


def _write_audio(
    container: av.container.OutputContainer,
    stream: av.audio.stream.AudioStream,
    audio: npt.NDArray[np.float32],
    sample_rate_hz: int,
) -> None:
    samples = np.clip(audio.astype(np.float32), -1.0, 1.0)
    for start in range(0, len(samples), AAC_FRAME_SAMPLES):
        block = samples[start : start + AAC_FRAME_SAMPLES]
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = sample_rate_hz
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate_hz)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_wav(path: str | Path, audio: npt.NDArray[np.float32], sample_rate_hz: int = SAMPLE_RATE_HZ) -> None:
    """Write (S,) float32 mono samples in [-1, 1] as a 16-bit PCM WAV file."""
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
    # the file is opened first: wave.open on a bad path leaves an object that complains when collected
    with open(path, "wb") as file, wave.open(file, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate_hz)
        handle.writeframes(pcm.tobytes())
