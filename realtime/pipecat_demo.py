"""A pipecat bot with this engine's face, on pipecat's small WebRTC transport (``stableface
pipecat-demo``).

One aiohttp server: ``GET /`` is a page that calls the bot from a browser, ``POST /api/offer``
takes the browser's SDP offer (``{"sdp", "type"}``) and answers it with a pipecat
``SmallWebRTCConnection``; each call runs its own pipeline::

    transport.input() -> bot voice -> StableFaceVideoService -> transport.output()

The bot voice here needs no cloud service: by default it repeats the caller's microphone (so the
avatar mouths what you say, delayed by the pipeline); with ``--say speech.wav`` it speaks that file
once the call is up. In a real agent the voice is the TTS service's output. Every call shares one
loaded avatar.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import web
from pipecat.frames.frames import Frame, InputAudioRawFrame, TTSAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.workers.runner import WorkerRunner

from engines.errors import InputError
from engines.timebase import SAMPLE_RATE_HZ
from realtime.engine import AvatarEngine
from realtime.pipecat_avatar import StableFaceVideoService

logger = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parents[1] / "web_client" / "pipecat.html"
TTS_PIECE_MS = 20
MAX_OFFER_BYTES = 64 * 1024

FloatArray = npt.NDArray[np.float32]
# Called once a call's media flows: (task, service) -> runs the bot's side of the call.
BotScript = Callable[[PipelineWorker, StableFaceVideoService], Awaitable[None]]


class EchoVoice(FrameProcessor):
    """The caller's microphone as the bot's voice: ``InputAudioRawFrame`` -> ``TTSAudioRawFrame``."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self.push_frame(
                TTSAudioRawFrame(
                    audio=frame.audio, sample_rate=frame.sample_rate, num_channels=frame.num_channels
                )
            )
        else:
            await self.push_frame(frame, direction)


def tts_frames(speech: FloatArray) -> list[TTSAudioRawFrame]:
    """16 kHz float32 speech as the 20 ms int16 frames a TTS service would push."""
    pcm = (np.clip(speech, -1.0, 1.0) * 32767).astype(np.int16)
    step = SAMPLE_RATE_HZ * TTS_PIECE_MS // 1000
    return [
        TTSAudioRawFrame(
            audio=pcm[start : start + step].tobytes(), sample_rate=SAMPLE_RATE_HZ, num_channels=1
        )
        for start in range(0, len(pcm), step)
    ]


def say(speech: FloatArray) -> BotScript:
    """A bot script that speaks ``speech`` (16 kHz float32) as soon as the call is up."""

    async def script(task: PipelineWorker, _service: StableFaceVideoService) -> None:
        await task.queue_frames(tts_frames(speech))

    return script


class PipecatDemo:
    """The demo server's state: the shared avatar and the calls in progress.

    Args:
        engine: the loaded avatar every call shares.
        script: the bot's side of a call (None: repeat the caller's microphone).
    """

    def __init__(self, engine: AvatarEngine, script: BotScript | None = None) -> None:
        self.engine = engine
        self.script = script
        self.calls: dict[str, tuple[PipelineWorker, asyncio.Task[None]]] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_OFFER_BYTES)
        app.router.add_get("/", self._page)
        app.router.add_post("/api/offer", self._offer)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _page(self, _request: web.Request) -> web.StreamResponse:
        return web.FileResponse(PAGE)

    async def _offer(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            sdp, kind = body["sdp"], body["type"]
            if not isinstance(sdp, str) or kind != "offer":
                raise ValueError("not an SDP offer")
        except (ValueError, KeyError, TypeError) as error:
            return web.json_response({"error": f"bad offer: {error}"}, status=400)
        connection = SmallWebRTCConnection(ice_servers=[])
        try:
            await connection.initialize(sdp=sdp, type=kind)
        except Exception as error:  # aiortc rejects malformed SDP with assorted exception types
            return web.json_response({"error": f"bad offer: {error}"}, status=400)
        answer = connection.get_answer()  # type: ignore[no-untyped-call]
        if answer is None:
            return web.json_response({"error": "no answer"}, status=500)
        self._start_call(connection, answer["pc_id"])
        return web.json_response(answer)

    def _start_call(self, connection: SmallWebRTCConnection, call_id: str) -> None:
        service = StableFaceVideoService(self.engine)
        width, height = service.video_size
        transport = SmallWebRTCTransport(
            webrtc_connection=connection,
            params=TransportParams(
                audio_in_enabled=self.script is None,
                audio_out_enabled=True,
                audio_out_sample_rate=SAMPLE_RATE_HZ,
                video_out_enabled=True,
                # Images synced with the audio set the transport's current image, which its video
                # task sends at the frame rate; live mode would wait on its own queue instead.
                video_out_is_live=not service.sync_images_with_audio,
                video_out_width=width,
                video_out_height=height,
                video_out_framerate=25,
            ),
        )
        stages: list[Any] = [transport.input()]
        if self.script is None:
            stages.append(EchoVoice())
        stages += [service, transport.output()]
        task = PipelineWorker(Pipeline(stages), params=PipelineParams(enable_metrics=False))

        @transport.event_handler("on_client_connected")  # type: ignore[untyped-decorator]
        async def on_connected(_transport: Any, _client: Any) -> None:
            if self.script is not None:
                await self.script(task, service)

        @transport.event_handler("on_client_disconnected")  # type: ignore[untyped-decorator]
        async def on_disconnected(_transport: Any, _client: Any) -> None:
            await task.cancel()

        running = asyncio.get_running_loop().create_task(self._run_call(task), name=f"pipecat call {call_id}")
        self.calls[call_id] = (task, running)
        running.add_done_callback(lambda _done: self.calls.pop(call_id, None))

    async def _run_call(self, task: PipelineWorker) -> None:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(task)
        await runner.run()

    async def _shutdown(self, _app: web.Application) -> None:
        for task, running in list(self.calls.values()):
            await task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(running, 5)


def read_speech(path: Path) -> FloatArray:
    """A speech file as 16 kHz mono float32.

    Raises:
        InputError: unreadable, or no audio.
    """
    from engines.media.decode import load_audio

    return np.asarray(load_audio(path), dtype=np.float32)


def run_demo(engine: AvatarEngine, host: str, port: int, script: BotScript | None) -> None:
    """Serve the demo until interrupted (Ctrl-C)."""
    demo = PipecatDemo(engine, script)
    if not PAGE.is_file():
        raise InputError(f"{PAGE}: the demo page is missing from the install")
    web.run_app(demo.app(), host=host, port=port, print=None)
