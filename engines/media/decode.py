"""Reading video and audio from files, resampled to the rates the engine works at.

Video comes out as RGB frames at a fixed frame rate (25 fps by default): each output frame ``k``
is the source frame whose presentation time is nearest to ``k / fps``, so a 30 fps source drops
one frame in six and a 20 fps source repeats one in four, without drift. Audio comes out as mono
float32 at 16 kHz.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.error
import numpy as np
import numpy.typing as npt

from engines.errors import InputError
from engines.timebase import FPS, SAMPLE_RATE_HZ

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MediaInfo:
    """What a media file contains, read from its container headers."""

    path: Path
    has_video: bool
    has_audio: bool
    width: int
    height: int
    fps: float
    video_duration_s: float
    audio_duration_s: float


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a media file")
    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable audio or video file ({_reason(exc)})") from exc


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).splitlines()[0] if text else type(exc).__name__


def _stream_duration_s(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / av.time_base
    return 0.0


def probe_media(path: str | Path) -> MediaInfo:
    """Read a file's headers.

    Raises:
        InputError: the file does not exist or is not a media file FFmpeg can open.
    """
    path = Path(path)
    with _open(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        fps = float(video.average_rate or video.guessed_rate or 0) if video is not None else 0.0
        return MediaInfo(
            path=path,
            has_video=video is not None,
            has_audio=audio is not None,
            width=int(video.codec_context.width) if video is not None else 0,
            height=int(video.codec_context.height) if video is not None else 0,
            fps=fps,
            video_duration_s=_stream_duration_s(container, video) if video is not None else 0.0,
            audio_duration_s=_stream_duration_s(container, audio) if audio is not None else 0.0,
        )


def iter_video_frames(path: str | Path, fps: float = FPS) -> Iterator[npt.NDArray[np.uint8]]:
    """Decode the first video stream as RGB frames resampled to ``fps``.

    Args:
        path: a video file.
        fps: output frame rate.

    Yields:
        (H, W, 3) uint8 RGB frames, one per 1/fps seconds from the first frame on.

    Raises:
        InputError: not a video, no video stream, or a stream that cannot be decoded.
    """
    path = Path(path)
    container = _open(path)
    try:
        if not container.streams.video:
            raise InputError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield from _resample_frames(path, container, stream, fps)
    finally:
        container.close()


def _resample_frames(
    path: Path,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    fps: float,
) -> Iterator[npt.NDArray[np.uint8]]:
    step = 1.0 / fps
    start: float | None = None
    previous: tuple[float, npt.NDArray[np.uint8]] | None = None
    next_index = 0
    decoded = 0
    nominal = float(stream.average_rate or stream.guessed_rate or fps)
    try:
        for frame in container.decode(stream):
            if frame.pts is not None and frame.time_base is not None:
                time_s = float(frame.pts * frame.time_base)
            else:
                time_s = decoded / nominal
            decoded += 1
            if start is None:
                start = time_s
            time_s -= start
            image = np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
            # Emit every output time that lies closer to an already-seen frame than to this one.
            while previous is not None and next_index * step < (previous[0] + time_s) / 2:
                yield previous[1]
                next_index += 1
            previous = (time_s, image)
    except av.error.FFmpegError as exc:
        raise InputError(f"{path}: corrupt video stream after {decoded} frames ({_reason(exc)})") from exc
    if decoded == 0:
        raise InputError(f"{path}: the video stream holds no decodable frame")
    if previous is not None:
        last_end = previous[0] + 1.0 / nominal
        while next_index * step < last_end - step / 2 or next_index == 0:
            yield previous[1]
            next_index += 1


def load_audio(path: str | Path, sample_rate_hz: int = SAMPLE_RATE_HZ) -> npt.NDArray[np.float32]:
    """Decode the first audio stream as mono float32 at ``sample_rate_hz``.

    Args:
        path: any file with an audio stream (wav, mp3, mp4, ...).
        sample_rate_hz: output rate.

    Returns:
        (S,) float32 samples in [-1, 1].

    Raises:
        InputError: not a media file, no audio stream, or a corrupt one.
    """
    path = Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise InputError(f"{path}: has no audio track")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate_hz)
        pieces: list[npt.NDArray[np.float32]] = []
        try:
            for frame in container.decode(stream):
                frame.pts = None
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        except av.error.FFmpegError as exc:
            raise InputError(f"{path}: corrupt audio stream ({_reason(exc)})") from exc
    if not pieces:
        raise InputError(f"{path}: the audio track holds no decodable sample")
    return np.concatenate(pieces)
