"""The avatar in a real pipecat pipeline, called by a real WebRTC client (aiortc) on loopback.

The demo server (``realtime.pipecat_demo``) answers the client's offer with pipecat's small WebRTC
transport and runs ``transport.input() -> voice -> StableFaceVideoService -> transport.output()``.
One clock serves sender and receiver, so the received frames and sound can be lined up.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession, web

pytest.importorskip("pipecat", reason="the pipecat extra is not installed: pip install -e .[pipecat]")

from aiortc.mediastreams import AudioStreamTrack
from pipecat.frames.frames import InterruptionFrame
from pipecat.pipeline.worker import PipelineWorker

from benchmarks.lip_timing import lips_after_sound_ms, received_loudness
from benchmarks.pipecat_call import call_demo
from benchmarks.signals import bursts
from engines.timebase import FPS
from offline_training.synthetic.speech import synthesize_speech
from realtime.client import ArrayAudioTrack, AvatarClient, ClientRecording
from realtime.engine import AvatarEngine
from realtime.mouth_probe import MouthProbe
from realtime.pipecat_avatar import StableFaceVideoService, load_avatar_engine
from realtime.pipecat_demo import PipecatDemo, tts_frames

pytestmark = pytest.mark.realtime

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def engine() -> Iterator[AvatarEngine]:
    loaded = load_avatar_engine("default", "auto")
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def probe(engine: AvatarEngine) -> MouthProbe:
    return MouthProbe.calibrate(engine, synthesize_speech(seed=99, duration_s=6.0).audio)


def test_the_avatar_speaks_the_pipeline_audio_at_25_fps_in_sync(
    engine: AvatarEngine, probe: MouthProbe
) -> None:
    """Echo bot: the caller's speech is the bot's voice; lips follow the sound that comes back."""
    sent = bursts(seed=3, seconds=8.0)
    microphone = ArrayAudioTrack(sent.audio, 16_000)
    recording = asyncio.run(call_demo(engine, None, microphone, seconds=9.0))
    assert microphone.started is not None
    arrivals = np.array([frame.arrival_s for frame in recording.video])
    window = (arrivals >= microphone.started + 0.5) & (arrivals < microphone.started + 8.0)
    assert window.sum() >= 0.9 * 7.5 * FPS, f"{window.sum()} frames in 7.5 s"
    scores = np.array([probe.score(frame.image) for frame in recording.video])
    grid, level = received_loudness(recording)
    assert level.max() > 0.05, "the bot's voice came back"
    lag_ms, corr = lips_after_sound_ms(arrivals[window], scores[window], grid, level)
    assert corr >= 0.4, f"mouth vs sound correlation {corr:.2f}"
    assert abs(lag_ms) <= 80, f"lips {lag_ms:+.0f} ms after the sound"


def test_an_interruption_stops_the_voice_and_closes_the_mouth_at_once(
    engine: AvatarEngine, probe: MouthProbe
) -> None:
    """TTS-like bot audio, 6 s queued at once; after 3 s the pipeline is interrupted."""
    speech = synthesize_speech(seed=4, duration_s=6.0).audio.astype(np.float32)
    marks: dict[str, float] = {}
    services: list[StableFaceVideoService] = []

    async def script(task: PipelineWorker, service: StableFaceVideoService) -> None:
        services.append(service)
        await asyncio.sleep(1.0)
        marks["speech"] = time.monotonic()
        await task.queue_frames(tts_frames(speech))
        await asyncio.sleep(3.0)
        marks["interrupt"] = time.monotonic()
        await task.queue_frame(InterruptionFrame())

    recording = asyncio.run(call_demo(engine, script, AudioStreamTrack(), seconds=6.5))
    assert [service.interruptions for service in services] == [1]
    speaking, stopped = marks["speech"] + 0.5, marks["interrupt"]
    arrivals = np.array([frame.arrival_s for frame in recording.video])
    scores = np.array([probe.score(frame.image) for frame in recording.video])
    grid, level = received_loudness(recording)

    before = (grid >= speaking) & (grid < stopped)
    after = grid >= stopped + 0.1
    assert level[before].mean() > 0.03, "the bot was speaking"
    assert level[after].max() < 0.01 * level[before].max(), "no bot audio after the interruption"

    speech_scores = scores[(arrivals >= speaking) & (arrivals < stopped)]
    open_mouth = 0.5 * float(np.percentile(speech_scores, 95))
    # 12-14% of the frames alone, 9.8% once in a loaded full run: "opened" is a few frames, not a rate
    assert (speech_scores > open_mouth).mean() > 0.05, "the mouth opened while the bot spoke"
    late = scores[arrivals >= stopped + 0.2]
    assert len(late) >= 0.9 * (arrivals[-1] - stopped - 0.2) * FPS
    assert late.max() < open_mouth, "the mouth stays closed after the interruption"


def test_the_demo_page_and_bad_offers(engine: AvatarEngine) -> None:
    async def run() -> list[tuple[int, Any]]:  # (status, page text or JSON body)
        runner = web.AppRunner(PipecatDemo(engine).app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        answers: list[tuple[int, Any]] = []
        try:
            async with ClientSession() as http:
                async with http.get(f"{url}/") as page:
                    answers.append((page.status, await page.text()))
                for body in ({"sdp": "v=0 nonsense", "type": "offer"}, {"type": "offer"}, [1, 2]):
                    async with http.post(f"{url}/api/offer", json=body) as response:
                        answers.append((response.status, await response.json()))
                async with http.post(f"{url}/api/offer", data=b"x" * 100_000) as response:
                    answers.append((response.status, None))
        finally:
            await runner.cleanup()
        return answers

    (page_status, page), *refused = asyncio.run(run())
    assert page_status == 200 and "/api/offer" in page and "AI-generated" in page
    assert [status for status, _ in refused] == [400, 400, 400, 413]
    assert all(body["error"].startswith("bad offer") for _, body in refused[:3])


@pytest.mark.browser
def test_chromium_calls_the_pipecat_demo_bot(tmp_path: Path) -> None:
    """``stableface pipecat-demo`` in its own process; Chromium's fake microphone is the caller."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.common.by import By
    from test_browser import _chromium

    from engines.media.encode import write_wav

    wav = tmp_path / "speech.wav"
    write_wav(wav, synthesize_speech(seed=8, duration_s=6.0, sample_rate_hz=48_000).audio, 48_000)
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    log = (tmp_path / "demo.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "stableface", "pipecat-demo", "--port", str(port)], stdout=log, stderr=log
    )
    driver = None
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "demo.log"
                ).read_text()
                time.sleep(0.3)
        driver = _chromium(tmp_path, wav)
        driver.get(url)
        driver.find_element(By.ID, "call").click()
        state: dict[str, Any] = {}
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            state = driver.execute_script("return Object.assign({}, window.demo)")
            assert not str(state["status"]).startswith("error"), state
            if state["status"] == "connected" and state["framesShown"] >= 50:
                break
            time.sleep(0.5)
        assert state["status"] == "connected" and state["framesShown"] >= 50, state
        size = driver.execute_script(
            "const v = document.getElementById('avatar'); return [v.videoWidth, v.videoHeight]"
        )
        assert size == [256, 256]
        driver.find_element(By.ID, "hang").click()
    finally:
        if driver is not None:
            driver.quit()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        finally:
            if server.poll() is None:
                server.kill()
            log.close()
    text = (tmp_path / "demo.log").read_text()
    assert server.returncode == 0, text[-2000:]
    assert "Traceback" not in text, text[-2000:]


def test_two_calls_share_one_loaded_avatar_without_cross_talk(engine: AvatarEngine) -> None:
    """Two pipelines at once on one engine: each caller gets frames and only its own voice back."""
    speech = bursts(seed=7, seconds=5.0)

    async def run() -> tuple[list[ClientRecording], int]:
        demo = PipecatDemo(engine)  # echo bot: each caller's voice is its own bot's voice
        runner = web.AppRunner(demo.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        talker = AvatarClient(url, ArrayAudioTrack(speech.audio, 16_000), offer_path="api/offer")
        quiet = AvatarClient(url, AudioStreamTrack(), offer_path="api/offer")
        try:
            await asyncio.gather(talker.connect(), quiet.connect())
            await asyncio.sleep(2.0)
            calls_at_once = len(demo.calls)
            await asyncio.sleep(4.0)
        finally:
            await asyncio.gather(talker.close(), quiet.close())
            await runner.cleanup()
        return [talker.recording, quiet.recording], calls_at_once

    (talking, silent), calls_at_once = asyncio.run(run())
    assert calls_at_once == 2
    for recording in (talking, silent):
        arrivals = np.array([frame.arrival_s for frame in recording.video])
        assert len(arrivals) >= 0.5 * 6.0 * FPS, "both calls get frames (two calls share 2 cores)"
    _, talking_level = received_loudness(talking)
    _, silent_level = received_loudness(silent)
    assert talking_level.max() > 0.05, "the talker hears its bot"
    assert silent_level.max() < 0.01, "the quiet caller hears nothing of the other call"
