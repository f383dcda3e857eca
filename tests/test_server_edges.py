"""Hostile and odd requests against a real ``stableface serve``: each gets a JSON error with the
right status, nothing half-built is left behind, and the server serves on.
docs/hostile-input.md is the table of what each gets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from speech_signals import speech_with_pauses

from realtime.client import ArrayAudioTrack, AvatarClient
from realtime.server import AvatarServer
from realtime.settings import PeerTimeouts, ServerSettings
from realtime.worker_pool import RenderPool

pytestmark = pytest.mark.realtime
CONNECTING_PER_ADDRESS = 2


async def _serve(render_pool: RenderPool, **settings: object) -> tuple[AvatarServer, object]:
    server = AvatarServer(render_pool, ServerSettings(port=0, **settings))
    return server, await server.start()


@pytest.fixture
async def server(render_pool: RenderPool) -> AsyncIterator[AvatarServer]:
    server, runner = await _serve(render_pool, max_sessions=4, body_timeout_s=0.5)
    yield server
    await runner.cleanup()  # type: ignore[attr-defined]


async def _offer(audio: int = 1, video: int = 1) -> str:
    pc = RTCPeerConnection()
    for _ in range(audio):
        pc.addTransceiver("audio", direction="sendonly")
    for _ in range(video):
        pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def _raw(url: str, request: bytes, read_timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (what aiohttp's client would refuse to send) and read the reply."""
    host, port = re.match(r"https?://([^:/]+):(\d+)/", url).groups()  # type: ignore[union-attr]
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), read_timeout_s)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(
            reader.readexactly(int(headers.get("content-length", 0))), read_timeout_s
        )
        return int(lines[0].split()[1]), headers, body
    finally:
        writer.close()


def _with_audio_sections(sdp: str, count: int) -> str:
    """``count`` more minimal audio sections, each one more track for the server to read."""
    extra = "".join(
        f"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:x{i}\r\na=sendonly\r\n"
        "a=rtpmap:111 opus/48000/2\r\n"
        for i in range(count)
    )
    return sdp + extra


def _sdp_without_common_codecs(sdp: str) -> str:
    for codec in ("opus/48000/2", "G722/8000", "PCMU/8000", "PCMA/8000"):
        sdp = sdp.replace(codec, "G729/8000")
    return re.sub(r"m=audio (\d+) (\S+) [\d ]+", r"m=audio \1 \2 18", sdp)


async def test_hostile_offers_get_json_errors_and_leave_nothing_behind(
    server: AvatarServer, caplog: pytest.LogCaptureFixture
) -> None:
    good = await _offer()
    offer = f"{server.url}offer"
    cases: list[tuple[str, bytes | str, dict[str, str], int, str]] = [
        (
            "SDP the parser asserts on",
            json.dumps({"sdp": "v=0\r\nm=audio\r\n", "type": "offer"}),
            {},
            400,
            "malformed SDP",
        ),
        (
            "SDP with a broken rtpmap",
            json.dumps({"sdp": "v=0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:x\r\n", "type": "offer"}),
            {},
            400,
            "malformed SDP",
        ),
        (
            "no codec in common",
            json.dumps({"sdp": _sdp_without_common_codecs(good), "type": "offer"}),
            {},
            400,
            "no codec in common",
        ),
        (
            "300 audio sections",
            json.dumps({"sdp": _with_audio_sections(good, 299), "type": "offer"}),
            {},
            400,
            "more than one audio",
        ),
        (
            "2 video sections",
            json.dumps({"sdp": await _offer(video=2), "type": "offer"}),
            {},
            400,
            "more than one video",
        ),
        ("JSON nested 30 000 deep", "[" * 30_000 + "]" * 30_000, {}, 400, "JSON"),
        (
            "an unknown charset",
            json.dumps({"type": "offer"}),
            {"Content-Type": "application/json; charset=klingon"},
            400,
            "sdp",
        ),
        ("not UTF-8", b'{"sdp": "\xff\xfe", "type": "offer"}', {}, 400, "UTF-8"),
        ("type answer", json.dumps({"sdp": good, "type": "answer"}), {}, 400, '"type" must be "offer"'),
    ]
    caplog.set_level(logging.INFO)
    async with aiohttp.ClientSession() as http:
        for what, body, headers, status, words in cases:
            async with http.post(offer, data=body, headers=headers) as response:
                answer = await response.json()
                assert response.status == status, (what, response.status, answer)
                assert words in answer["error"], (what, answer)
                assert "Error" not in answer["error"] and "Traceback" not in answer["error"], (what, answer)
    assert not server.sessions and not server._answering
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    metrics = server.metrics.render().decode()
    assert 'stableface_offers_rejected_total{reason="bad sdp"} 6.0' in metrics
    assert 'stableface_offers_rejected_total{reason="malformed"} 3.0' in metrics


async def test_broken_requests_at_the_http_level(server: AvatarServer) -> None:
    port_url = server.url
    # a body declared but never sent: answered after body_timeout_s, not held open
    started = time.monotonic()
    status, headers, body = await _raw(
        port_url,
        b"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{",
    )
    assert status == 408 and "did not arrive" in json.loads(body)["error"]
    assert 0.4 < time.monotonic() - started < 4.0
    # static files and unknown paths that are not there: JSON, not aiohttp's text
    for path in (b"/static/nope.js", b"/nowhere"):
        status, headers, body = await _raw(
            port_url, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert (
            status == 404
            and headers["content-type"].startswith("application/json")
            and json.loads(body)["error"]
        )
    status, headers, _ = await _raw(
        port_url, b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 200 and headers["content-type"] == "image/svg+xml"


async def test_the_token_guards_turn_credentials_and_any_header_bytes_get_401(
    render_pool: RenderPool, caplog: pytest.LogCaptureFixture
) -> None:
    server, runner = await _serve(
        render_pool,
        token="s3cret",
        ice_servers=(
            "stun:stun.example.org:3478",
            "turn:alice:pa55@turn.example.org:3478",
            "turn:relay.example.org:3478",
        ),
        turn_secret="shared",
        turn_ttl_s=600,
    )
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    try:
        for header in (b"Bearer s3cr\xe9t", b"Bearer \xff\xfe", "Bearer s3cret\u00a0".encode()):
            status, _, body = await _raw(
                server.url,
                b"POST /offer HTTP/1.1\r\nHost: x\r\nAuthorization: "
                + header
                + b"\r\nContent-Length: 2\r\n\r\n{}",
            )
            assert status == 401 and "token" in json.loads(body)["error"], header
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}config?token=s3cret") as response:
                anonymous = await response.json()
            async with http.get(
                f"{server.url}config", headers={"Authorization": "Bearer s3cret"}
            ) as response:
                authorised = await response.json()
        assert [s["urls"] for s in anonymous["ice_servers"]] == ["stun:stun.example.org:3478"]
        assert anonymous["token_required"] is True
        static, rest = authorised["ice_servers"][1], authorised["ice_servers"][2]
        assert (static["username"], static["credential"]) == ("alice", "pa55")
        expiry, user = rest["username"].split(":")
        assert user == "stableface" and 590 < int(expiry) - time.time() <= 600
        expected = base64.b64encode(
            hmac.new(b"shared", rest["username"].encode(), hashlib.sha1).digest()
        ).decode()
        assert rest["credential"] == expected
    finally:
        await runner.cleanup()  # type: ignore[attr-defined]
    access = "\n".join(r.getMessage() for r in caplog.records if r.name == "aiohttp.access")
    assert "/config?token=…" in access and "s3cret" not in access


async def test_a_pending_offer_flood_cannot_lock_out_a_caller(render_pool: RenderPool) -> None:
    server, runner = await _serve(
        render_pool,
        max_sessions=3,
        admission="max-sessions",
        max_connecting_per_address=CONNECTING_PER_ADDRESS,
        timeouts=PeerTimeouts(connect_s=1.5),
    )
    flood = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    try:
        async with aiohttp.ClientSession(connector=flood) as http:
            statuses, retry = [], None
            for _ in range(CONNECTING_PER_ADDRESS + 2):  # offers whose ICE never comes
                body = json.dumps({"sdp": await _offer(), "type": "offer"})
                async with http.post(f"{server.url}offer", data=body) as response:
                    statuses.append(response.status)
                    retry = response.headers.get("Retry-After") if response.status == 429 else retry
        assert statuses == [200] * CONNECTING_PER_ADDRESS + [429, 429] and retry == "2"
        audio, _ = speech_with_pauses(3, [("speech", 1.0)])
        caller = AvatarClient(server.url, ArrayAudioTrack(audio, 16_000))
        await caller.connect()  # from 127.0.0.1: the flood holds 2 of 3 slots, not all
        await caller.close()
        await asyncio.sleep(2.0)  # the pending ones give their slots back after connect_s
        assert not server.sessions
        metrics = server.metrics.render().decode()
        ended = re.findall(
            r'stableface_sessions_total\{reason="(connect timeout|ice failed)"\} (\d+)', metrics
        )
        assert sum(float(count) for _, count in ended) == CONNECTING_PER_ADDRESS, metrics
    finally:
        await runner.cleanup()  # type: ignore[attr-defined]


async def test_an_offer_being_answered_at_shutdown_is_refused_and_closed(render_pool: RenderPool) -> None:
    sdp = json.dumps({"sdp": await _offer(), "type": "offer"})
    for _attempt in range(5):  # the shutdown must land while the answer is being made
        server, runner = await _serve(render_pool)
        async with aiohttp.ClientSession() as http:
            request = asyncio.ensure_future(http.post(f"{server.url}offer", data=sdp))
            while not server._answering and not request.done():
                await asyncio.sleep(0.001)
            if not server._answering:
                (await request).close()
                await runner.cleanup()  # type: ignore[attr-defined]
                continue
            answering = next(iter(server._answering))
            await runner.cleanup()  # type: ignore[attr-defined]
            response = await request
            body = await response.json()
        assert response.status == 503 and "shutting down" in body["error"]
        assert answering.reason == "server shutdown" and answering.pc.connectionState == "closed"
        return
    pytest.fail("the answer always came before the shutdown")


async def test_a_session_whose_close_fails_still_gives_its_slot_back(server: AvatarServer) -> None:
    audio, _ = speech_with_pauses(4, [("speech", 1.0)])
    caller = AvatarClient(server.url, ArrayAudioTrack(audio, 16_000))
    await caller.connect()
    session = next(iter(server.sessions))
    close_streaming = session.session.close

    async def fails_after_closing() -> None:
        await close_streaming()
        raise RuntimeError("injected failure while closing")

    session.session.close = fails_after_closing  # type: ignore[method-assign]
    await session.close("hang-up")
    assert session not in server.sessions and server.metrics.sessions_active._value.get() == 0
    freed = weakref.ref(session)
    del session  # before the server's collection once idle, 0.5 s after the last call ended
    await caller.close()
    await asyncio.sleep(1.0)
    assert freed() is None


@pytest.mark.parametrize("trusted", [True, False])
async def test_callers_behind_a_trusted_balancer_are_told_apart_by_x_forwarded_for(
    render_pool: RenderPool, trusted: bool
) -> None:
    server, runner = await _serve(
        render_pool,
        max_sessions=4,
        admission="max-sessions",
        max_connecting_per_address=1,
        trusted_proxies=("127.0.0.1",) if trusted else (),
    )
    try:
        statuses = []
        async with aiohttp.ClientSession() as http:
            for forwarded in ("198.51.100.7, 10.0.0.1", "10.0.0.2", "10.0.0.1"):  # offers never connect
                body = json.dumps({"sdp": await _offer(), "type": "offer"})
                headers = {"X-Forwarded-For": forwarded}
                async with http.post(f"{server.url}offer", data=body, headers=headers) as response:
                    statuses.append(response.status)
        # the balancer's own entry (the last) counts; a forged first entry does not
        assert statuses == ([200, 200, 429] if trusted else [200, 429, 429])
    finally:
        await runner.cleanup()  # type: ignore[attr-defined]
