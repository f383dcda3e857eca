"""``stableface render --causal``: a whole file through the streaming code path.

The same ``AvatarStream`` a live session uses, fed the whole file at once; frames are returned
on the file's own timeline (frame 0 = the first 40 ms of the file), without the live delay.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from engines.timebase import SAMPLES_PER_FRAME
from realtime.engine import AvatarEngine
from realtime.settings import StreamSettings
from realtime.stream import StreamFrame

FloatArray = npt.NDArray[np.float32]


def stream_file(
    engine: AvatarEngine,
    audio: FloatArray,
    progress: Callable[[int], None] | None = None,
    settings: StreamSettings | None = None,
) -> Iterator[StreamFrame]:
    """Render 16 kHz mono ``audio`` (S,) frame by frame with the streaming pipeline.

    Runs on the calling thread: use an engine that no live session shares. ``settings`` override
    the engine's stream settings.

    Yields:
        ``ceil(S / 640)`` frames with images, in order.
    """
    stream = engine.new_stream(settings)
    stream.push(np.ascontiguousarray(audio, dtype=np.float32))
    stream.finish()
    total = math.ceil(len(audio) / SAMPLES_PER_FRAME)
    while stream.chunk_ready() and stream.next_frame < total:
        frames = [frame for frame in stream.render_chunk() if 0 <= frame.index < total]
        yield from frames
        if progress is not None and frames:
            progress(len(frames))
