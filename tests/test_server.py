"""``stableface serve`` with real aiortc peers: calls, lip sync, bad input, limits, endings."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from speech_signals import calibrated_probe, envelope_per_frame, speech_with_pauses

from realtime.avatars import AvatarCatalog
from realtime.client import ArrayAudioTrack, AvatarClient, ClientRecording, OfferRefused
from realtime.mouth_probe import MouthProbe
from realtime.server import MAX_BODY_BYTES, AvatarServer
from realtime.settings import PeerTimeouts, ServerSettings
from realtime.worker_pool import RenderPool

pytestmark = pytest.mark.realtime

CALL_PATTERN = [("silence", 1.0), ("speech", 2.0), ("silence", 1.5), ("speech", 2.0), ("silence", 1.5)]


@pytest.fixture(scope="module")
def probe(catalog: AvatarCatalog) -> MouthProbe:
    return calibrated_probe(catalog.get("face"))


async def _serve(render_pool: RenderPool, **settings: object) -> tuple[AvatarServer, object]:
    server = AvatarServer(render_pool, ServerSettings(port=0, **settings))
    return server, await server.start()


@pytest.fixture
async def server(render_pool: RenderPool) -> AsyncIterator[AvatarServer]:
    server, runner = await _serve(render_pool, max_sessions=4)
    yield server
    await runner.cleanup()  # type: ignore[attr-defined]


def _lagged_correlation(
    times_s: np.ndarray, values: np.ndarray, reference: np.ndarray, lags_s: np.ndarray
) -> tuple[float, float]:
    """Best correlation of ``values`` at ``times_s`` with ``reference`` (25 fps) read ``lag`` earlier."""
    best = (-1.0, 0.0)
    for lag in lags_s:
        index = np.round((times_s - lag) * 25).astype(int)
        keep = (index >= 0) & (index < len(reference))
        if keep.sum() < 50:
            continue
        corr = float(np.corrcoef(values[keep], reference[index[keep]])[0, 1])
        best = max(best, (corr, float(lag)))
    return best


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for ``condition``; the timeout only bounds a hang (a loaded machine may take seconds)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _smooth(x: np.ndarray, frames: int = 3) -> np.ndarray:
    return np.convolve(x, np.ones(frames) / frames, mode="same")


async def test_a_call_gets_lip_synced_video_and_delayed_audio(
    server: AvatarServer, probe: MouthProbe
) -> None:
    audio, voiced = speech_with_pauses(7, CALL_PATTERN, rate_hz=48_000)
    track = ArrayAudioTrack(audio, 48_000)
    client = AvatarClient(server.url, track)
    await client.connect()
    duration = len(audio) / 48_000
    await asyncio.sleep(duration + 0.6)
    for _ in range(3):
        client.ping()
        await asyncio.sleep(0.1)
    await client.close()
    recording: ClientRecording = client.recording
    assert track.started is not None

    # ≥ 90% of the frames that 25 fps gives over the time media flowed
    first, last = recording.video[0].arrival_s, recording.video[-1].arrival_s
    expected = (last - first) * 25 + 1
    assert len(recording.video) >= 0.9 * expected, (len(recording.video), expected)
    assert len(recording.video) >= 0.9 * duration * 25

    # the mouth (read from pixels) follows the speech that was sent, the pipeline delay and at most
    # 600 ms of transport and jitter buffer later (server and caller share this process's
    # loop and a busy 2-core machine: the lips 620 ms after the voice were seen once in a full
    # run; audio-video sync is checked below, within two frames)
    times = np.array([v.arrival_s - track.started for v in recording.video])
    scores = np.array([probe.score(v.image) for v in recording.video])
    envelope = _smooth(envelope_per_frame(audio, 48_000))
    corr, lag = _lagged_correlation(times, scores, envelope, np.arange(0.0, 0.8, 0.02))
    delay_s = server.pool.get(None).latency_ms / 1000
    assert corr >= 0.4, f"mouth vs speech correlation {corr:.2f}"
    assert delay_s - 0.04 <= lag <= delay_s + 0.6, f"lips {lag * 1000:.0f} ms after the voice"

    # and closes in the pauses: open in speech, closed in silence (read at the best lag)
    index = np.round((times - lag) * 25).astype(int)
    keep = (index >= 0) & (index < len(voiced) // 1920)
    frame_voiced = voiced[::1920][index[keep]] > 0.5
    in_speech, in_silence = scores[keep][frame_voiced], scores[keep][~frame_voiced]
    assert in_speech.mean() > in_silence.mean() + 0.5 * scores.std(), (in_speech.mean(), in_silence.mean())

    # the audio comes back delayed with the video: same lag within two frames
    audio_times = np.array([t - track.started for t, _ in recording.audio])
    audio_rms = np.array([float(np.sqrt((a**2).mean())) for _, a in recording.audio])
    audio_corr, audio_lag = _lagged_correlation(audio_times, audio_rms, envelope, np.arange(0.0, 0.8, 0.02))
    assert audio_corr >= 0.7, audio_corr
    assert abs(audio_lag - lag) <= 0.08 + 1e-9, (audio_lag, lag)

    # the server's stats over the data channel, and the ping
    assert recording.stats and recording.stats[-1]["pipeline_latency_ms"] == server.pool.get(None).latency_ms
    assert recording.rtt_ms and all(0 < r < 500 for r in recording.rtt_ms)


@pytest.mark.parametrize(
    "rate_hz, channels",
    # Opus reaches the server at 48 kHz whatever the caller sent: two rates cover it by default
    [
        (8000, 1),
        pytest.param(16000, 2, marks=pytest.mark.slow),
        pytest.param(44100, 1, marks=pytest.mark.slow),
        (48000, 2),
    ],
)
async def test_clients_may_send_any_rate_mono_or_stereo(
    server: AvatarServer, rate_hz: int, channels: int
) -> None:
    audio, _ = speech_with_pauses(3, [("speech", 1.5), ("silence", 0.5)], rate_hz=rate_hz)
    samples = np.stack([audio, 0.5 * audio], 1) if channels == 2 else audio
    client = AvatarClient(server.url, ArrayAudioTrack(samples, rate_hz))
    await client.connect()
    await asyncio.sleep(2.0)
    sessions = list(server.sessions)
    await client.close()
    assert client.frames_received >= 35
    assert sessions[0].audio_frames_in >= 50
    loud = [a for _, a in client.recording.audio if np.abs(a).max() > 0.05]
    assert loud, "the speech comes back"


async def _post(
    url: str, data: bytes | str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.post(url, data=data, headers=headers or {}) as response:
        return response.status, await response.json()


async def _offer_sdp(audio: bool = True, video: bool = True) -> str:
    pc = RTCPeerConnection()
    if audio:
        pc.addTransceiver("audio", direction="sendonly")
    if video:
        pc.addTransceiver("video", direction="recvonly")
    if not (audio or video):
        pc.createDataChannel("x")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_bad_offers_get_clear_errors_while_a_call_goes_on(server: AvatarServer) -> None:
    # the malformed offers are made before the call: making an offer (ICE gathering) runs on this
    # test's own event loop, which also receives the good call's frames
    video_only = await _offer_sdp(audio=False)
    audio_only = await _offer_sdp(video=False)
    audio, _ = speech_with_pauses(5, [("speech", 6.0)], rate_hz=16_000)
    good = AvatarClient(server.url, ArrayAudioTrack(audio, 16_000))
    await good.connect()
    await asyncio.sleep(1.0)
    offer = f"{server.url}offer"
    cases: list[tuple[bytes | str, int, str]] = [
        (b"{not json", 400, "JSON"),
        (b"[1, 2]", 400, "object"),
        (json.dumps({"type": "offer"}), 400, "sdp"),
        (json.dumps({"sdp": "hello", "type": "offer"}), 400, "SDP"),
        (json.dumps({"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "type": "offer"}), 400, ""),
        (json.dumps({"sdp": video_only, "type": "offer"}), 400, "no audio"),
        (json.dumps({"sdp": audio_only, "type": "offer"}), 400, "no video"),
        (json.dumps({"sdp": video_only, "type": "answer"}), 400, "offer"),
        (
            json.dumps({"sdp": audio_only, "type": "offer", "avatar": "../../etc/passwd"}),
            404,
            "unknown avatar",
        ),
        (json.dumps({"sdp": audio_only, "type": "offer", "avatar": 3}), 400, "name"),
        (b"x" * (MAX_BODY_BYTES + 10), 413, "bytes"),
    ]
    for body, status, words in cases:
        got, answer = await _post(offer, body)
        assert got == status, (body[:60], got, answer)
        error = answer.get("error")
        assert isinstance(error, str) and words in error, answer
    await asyncio.sleep(1.0)
    await good.close()
    await _until(lambda: not server.sessions)
    gaps = np.diff([v.arrival_s for v in good.recording.video])
    assert good.frames_received >= 40 and gaps.max() < 0.5, "the call streamed on through the bad requests"


async def test_the_token_guards_offers_and_metrics(render_pool: RenderPool) -> None:
    server, runner = await _serve(render_pool, token="s3cret")
    try:
        sdp = json.dumps({"sdp": await _offer_sdp(), "type": "offer"})
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            status, body = await _post(f"{server.url}offer", sdp, headers)
            assert status == 401 and "token" in str(body["error"])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}metrics") as response:
                assert response.status == 401
            async with http.get(
                f"{server.url}metrics", headers={"Authorization": "Bearer s3cret"}
            ) as response:
                assert response.status == 200
            async with http.get(f"{server.url}healthz") as response:
                assert response.status == 200
        audio, _ = speech_with_pauses(1, [("speech", 1.0)])
        client = AvatarClient(server.url, ArrayAudioTrack(audio, 16_000), token="s3cret")
        await client.connect()
        await client.close()
    finally:
        await runner.cleanup()  # type: ignore[attr-defined]


async def test_a_full_server_answers_503_and_frees_slots_on_hang_up(render_pool: RenderPool) -> None:
    server, runner = await _serve(render_pool, max_sessions=2, admission="max-sessions")
    audio, _ = speech_with_pauses(2, [("speech", 3.0)])
    clients = [AvatarClient(server.url, ArrayAudioTrack(audio, 16_000)) for _ in range(3)]
    try:
        await clients[0].connect()
        await clients[1].connect()
        with pytest.raises(OfferRefused) as refused:
            await clients[2].connect()
        assert refused.value.status == 503 and "full" in str(refused.value.body["error"])
        await clients[0].close()
        await _until(lambda: len(server.sessions) < 2)
        late = AvatarClient(server.url, ArrayAudioTrack(audio, 16_000))
        await late.connect()
        await late.close()
        await clients[1].close()
    finally:
        await runner.cleanup()  # type: ignore[attr-defined]
    metrics = server.metrics.render().decode()
    assert 'stableface_offers_rejected_total{reason="full"} 1.0' in metrics


async def test_a_peer_that_goes_silent_on_the_wire_is_dropped(render_pool: RenderPool) -> None:
    server, runner = await _serve(render_pool, timeouts=PeerTimeouts(media_s=1.5))
    audio, _ = speech_with_pauses(2, [("speech", 1.0)])
    track = ArrayAudioTrack(audio, 16_000)
    client = AvatarClient(server.url, track)
    try:
        await client.connect()
        await asyncio.sleep(0.5)
        session = next(iter(server.sessions))
        for sender in client.pc.getSenders():  # the peer's machine dies: nothing more is sent
            if sender.track is not None:
                await sender.stop()
        await _until(lambda: not server.sessions)
        assert session.reason == "peer vanished"
    finally:
        await client.close()
        await runner.cleanup()  # type: ignore[attr-defined]


async def test_shutdown_closes_every_call(render_pool: RenderPool) -> None:
    server, runner = await _serve(render_pool, admission="max-sessions")
    audio, _ = speech_with_pauses(2, [("speech", 3.0)])
    clients = [AvatarClient(server.url, ArrayAudioTrack(audio, 16_000)) for _ in range(2)]
    for client in clients:
        await client.connect()
    sessions = list(server.sessions)
    await runner.cleanup()  # type: ignore[attr-defined]
    assert not server.sessions and all(s.reason == "server shutdown" for s in sessions)
    assert all(s.pc.connectionState == "closed" for s in sessions)
    for client in clients:
        await client.close()


async def test_health_config_metrics_and_the_web_client(server: AvatarServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}healthz") as response:
            health = await response.json()
        async with http.get(f"{server.url}config") as response:
            config = await response.json()
        async with http.get(server.url) as response:
            page = await response.text()
        async with http.get(f"{server.url}static/app.js") as response:
            assert response.status == 200
        async with http.get(f"{server.url}static/../pyproject.toml") as response:
            assert response.status in (403, 404)
        async with http.get(f"{server.url}metrics") as response:
            metrics = await response.text()
    assert health["status"] == "ok" and health["sessions"] == 0
    assert config["avatars"][0]["name"] == "face" and config["token_required"] is False
    assert config["ice_servers"] == []
    assert "<video" in page and "/static/app.js" in page
    for name in (
        "stableface_sessions_active",
        "# TYPE stableface_stage_latency_ms histogram",
        "stableface_frames_sent_total",
    ):
        assert name in metrics
