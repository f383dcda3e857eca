"""``stableface live``: the live pipeline without a browser — a microphone or a file in, local sinks out.

Audio is pushed into a real-time ``StreamingSession`` as it is captured (or, from a file, as fast
as it would be spoken, in 20 ms packets), and every paced output frame goes to each sink. The
frame sinks get the video; audio sinks (the virtual microphone) get the session's delayed audio
(``OutputFrame.audio``), which leaves with the frame it belongs to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.errors import InputError, MissingDependencyError
from engines.media.decode import load_audio
from engines.timebase import SAMPLE_RATE_HZ
from realtime.engine import AvatarEngine
from realtime.session import StreamingSession
from realtime.sinks import AudioSink, FrameSink, SinkClosed
from realtime.tasks import stop_task

logger = logging.getLogger(__name__)

PACKET_MS = 20
FloatArray = npt.NDArray[np.float32]


@dataclass
class LiveReport:
    """What a ``live`` run did."""

    frames: int
    skipped: int
    latency_ms: float
    ended_by: str


def load_speech(path: Path) -> FloatArray:
    """A speech file as (S,) float32 16 kHz mono (raises InputError for unusable files)."""
    return load_audio(path, SAMPLE_RATE_HZ)


async def push_samples(session: StreamingSession, audio: FloatArray, speed: float = 1.0) -> None:
    """Push (S,) 16 kHz samples in 20 ms packets at ``speed`` × real time, then end the input."""
    packet = SAMPLE_RATE_HZ * PACKET_MS // 1000
    started = time.monotonic()
    for index, first in enumerate(range(0, len(audio), packet)):
        await session.push_audio(audio[first : first + packet], SAMPLE_RATE_HZ)
        wait = started + (index + 1) * PACKET_MS / 1000 / speed - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
    session.end_input()


async def push_microphone(session: StreamingSession, device: str | None) -> None:
    """Capture a microphone (PortAudio through sounddevice) into the session until cancelled.

    Raises:
        MissingDependencyError: sounddevice or PortAudio is missing.
        InputError: no such input device, or it cannot be opened.
    """
    sounddevice = _import_sounddevice()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[FloatArray] = asyncio.Queue(maxsize=200)

    def captured(data: Any, frames: int, at: Any, status: Any) -> None:
        if status:
            logger.warning("microphone: %s", status)
        with contextlib.suppress(RuntimeError):  # the loop has closed: capture is ending
            loop.call_soon_threadsafe(_put_dropping_oldest, queue, data[:, 0].copy())

    selected: int | str | None = int(device) if device is not None and device.isdigit() else device
    try:
        info = sounddevice.query_devices(selected, "input")
        rate = int(info["default_samplerate"])
        stream = sounddevice.InputStream(
            device=selected,
            channels=1,
            samplerate=rate,
            dtype="float32",
            blocksize=rate * PACKET_MS // 1000,
            callback=captured,
        )
    except (ValueError, sounddevice.PortAudioError) as exc:
        names = [d["name"] for d in sounddevice.query_devices() if d["max_input_channels"] > 0]
        available = ", ".join(names) or "none"
        raise InputError(
            f"cannot open microphone {device or '(default)'}: {exc}; input devices: {available}"
        ) from None
    logger.info("microphone: %s at %d Hz", info["name"], rate)
    with stream:
        while True:
            await session.push_audio(await queue.get(), rate)


def _put_dropping_oldest(queue: asyncio.Queue[FloatArray], item: FloatArray) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)


def _import_sounddevice() -> Any:
    try:
        import sounddevice
    except ImportError:
        raise MissingDependencyError("the microphone needs sounddevice: pip install -e '.[mic]'") from None
    except OSError as exc:  # sounddevice is there but the PortAudio library is not
        raise MissingDependencyError(
            f"the microphone needs the PortAudio library ({exc}): apt install libportaudio2 "
            "(Debian/Ubuntu) or brew install portaudio (macOS)"
        ) from None
    return sounddevice


async def run_live(
    engine: AvatarEngine,
    sinks: list[FrameSink],
    feed: Callable[[StreamingSession], Any],
    max_seconds: float | None = None,
    audio_sinks: Sequence[AudioSink] = (),
) -> LiveReport:
    """Drive one real-time session with ``feed`` and send every output frame to every sink (its
    image to ``sinks``, its 40 ms of delayed audio to ``audio_sinks``).

    Ends when the input ends (a file), a sink is closed by its viewer, ``max_seconds`` pass or the
    task is cancelled (Ctrl-C); the session and the sinks are closed in every case.
    """
    session = StreamingSession(engine, paced=True)
    feeder = asyncio.get_running_loop().create_task(feed(session))
    ended_by = "end of input"
    try:
        async for frame in session.frames():
            if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
                raise feeder.exception()  # type: ignore[misc]
            for sink in sinks:
                sink.write(frame.image)
            for audio_sink in audio_sinks:
                audio_sink.write(frame.audio)
            if max_seconds is not None and frame.pts_s >= max_seconds:
                ended_by = "time limit"
                break
    except SinkClosed as exc:
        ended_by = str(exc)
    finally:
        await stop_task(feeder, "the audio feeder", failure_raised_elsewhere=True)
        stats = session.stats
        await session.close()
        for sink in sinks:
            sink.close()
        for audio_sink in audio_sinks:
            audio_sink.close()
    if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
        raise feeder.exception()  # type: ignore[misc]
    return LiveReport(stats.frames_out, stats.frames_skipped, stats.latency_ms, ended_by)
