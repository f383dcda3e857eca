"""The two media tracks a WebRTC session sends: the avatar's video and the delayed input audio.

Both are fed by one pump from the same ``OutputFrame`` (image and its 40 ms of audio together),
so each frame's picture and sound reach aiortc's RTP senders at the same moment and get RTP
timestamps of the same media time; the receiver's lip sync (RTCP sender reports) keeps them
together. The tracks never pace themselves: the session's output is already paced at 25 fps.
"""

from __future__ import annotations

import asyncio
import fractions
import logging

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from engines.timebase import FPS, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME

logger = logging.getLogger(__name__)

VIDEO_CLOCK_HZ = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_HZ)
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE_HZ)
QUEUE_FRAMES = 10  # 400 ms: beyond this the RTP sender is not keeping up and old frames are dropped

ImageRGB = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]


class _FrameQueueTrack(MediaStreamTrack):
    """A track whose ``recv`` hands out frames put by the pump, dropping the oldest when full."""

    def __init__(self) -> None:
        super().__init__()
        self._queue: asyncio.Queue[av.VideoFrame | av.AudioFrame | None] = asyncio.Queue(QUEUE_FRAMES)
        self.dropped = 0

    def _put(self, frame: av.VideoFrame | av.AudioFrame | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(frame)

    def finish(self) -> None:
        """No more frames: ``recv`` raises ``MediaStreamError`` once the queue is drained."""
        self._put(None)

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._queue.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        return frame


class AvatarVideoTrack(_FrameQueueTrack):
    """The avatar's frames, 25 fps, RTP timestamps at 90 kHz from the output frame index."""

    kind = "video"

    def put(self, index: int, image: ImageRGB) -> None:
        """Queue output frame ``index``: (H, W, 3) uint8 RGB (odd sizes are cropped to even)."""
        height, width = image.shape[0] & ~1, image.shape[1] & ~1
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:height, :width]), format="rgb24")
        frame.pts = index * (VIDEO_CLOCK_HZ // FPS)
        frame.time_base = VIDEO_TIME_BASE
        self._put(frame)


class DelayedAudioTrack(_FrameQueueTrack):
    """The session's input audio, delayed with the video: 16 kHz mono s16 in 20 ms frames.

    aiortc's Opus encoder sends whatever one ``recv`` returns as one RTP frame, and a receiver
    decodes one Opus packet per RTP frame: so every frame handed out must be one 20 ms Opus frame.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue = asyncio.Queue(2 * QUEUE_FRAMES)

    def put(self, index: int, samples: FloatArray) -> None:
        """Queue the (640,) float32 samples that play with output frame ``index`` (two frames)."""
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
        half = SAMPLES_PER_FRAME // 2
        for part in range(2):
            frame = av.AudioFrame.from_ndarray(
                pcm[part * half : (part + 1) * half].reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate = SAMPLE_RATE_HZ
            frame.pts = index * SAMPLES_PER_FRAME + part * half
            frame.time_base = AUDIO_TIME_BASE
            self._put(frame)


def audio_frame_samples(frame: av.AudioFrame) -> tuple[npt.NDArray[np.generic], int]:
    """A received audio frame as ((S,) or (S, channels) samples, sample rate in Hz).

    Handles packed (interleaved) and planar layouts of any sample format PyAV decodes to.
    """
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    # planar: (channels, S) → (S, channels); packed: interleaved (1, S·channels)
    samples = data.T if frame.format.is_planar else data.reshape(-1, channels)
    return (samples[:, 0] if channels == 1 else samples), int(frame.sample_rate)
