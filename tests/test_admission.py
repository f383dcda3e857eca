"""Admission by measured capacity: the load model, the repeated-frames watch, and a real server
that admits what keeps real time and refuses the rest with a reason and Retry-After."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from speech_signals import speech_with_pauses

from realtime.batch_cost import BatchCost
from realtime.capacity import AvatarLoad, calls_supported, render_load
from realtime.client import ArrayAudioTrack, AvatarClient
from realtime.lb_agent import agent_reply
from realtime.repeat_watch import CallCount, RepeatWatch
from realtime.server import AvatarServer
from realtime.settings import ServerSettings
from realtime.worker_pool import RenderPool


def _cost(fixed_ms: float, per_row_ms: float) -> BatchCost:
    cost = BatchCost()
    for rows in (1, 4) * 20:
        cost.observe(rows, (fixed_ms + per_row_ms * rows) / 1000)
    return cost


def test_render_load_counts_the_batches_of_one_chunk_period() -> None:
    cost = _cost(fixed_ms=5, per_row_ms=5)  # chunks of 2 frames: one every 80 ms
    assert render_load(cost, 0, 2, 4) == 0
    assert render_load(cost, 1, 2, 4) == pytest.approx(10 / 80)
    assert render_load(cost, 4, 2, 4) == pytest.approx(25 / 80)
    assert render_load(cost, 5, 2, 4) == pytest.approx((25 + 10) / 80)  # a second batch


def test_calls_supported_share_one_device_between_avatars() -> None:
    cpu_like = AvatarLoad(_cost(fixed_ms=2, per_row_ms=9), chunk_frames=1, max_batch=4, calls=0)
    assert calls_supported(cpu_like, [], load_limit=0.45, hard_cap=16) == 1  # 11 ms, then 20 ms of 40
    gpu_like = AvatarLoad(_cost(fixed_ms=8, per_row_ms=0), chunk_frames=2, max_batch=8, calls=0)
    assert calls_supported(gpu_like, [], load_limit=0.85, hard_cap=16) == 16  # 2 batches: 16 of 80 ms
    assert calls_supported(gpu_like, [], load_limit=0.85, hard_cap=5) == 5
    busy = AvatarLoad(_cost(fixed_ms=8, per_row_ms=0), chunk_frames=2, max_batch=8, calls=8)  # 0.1
    assert calls_supported(cpu_like, [busy], load_limit=0.45, hard_cap=16) == 1
    assert calls_supported(cpu_like, [busy, busy, busy], load_limit=0.45, hard_cap=16) == 0
    slow = AvatarLoad(_cost(fixed_ms=20, per_row_ms=20), chunk_frames=1, max_batch=4, calls=0)  # 1 call: 1.0
    assert calls_supported(slow, [], load_limit=0.45, hard_cap=16) == 1  # an idle server takes one
    assert calls_supported(slow, [busy], load_limit=0.45, hard_cap=16) == 0  # but not beside others


def test_the_repeat_watch_judges_settled_calls_over_its_window() -> None:
    watch = RepeatWatch(window_s=5.0, settle_s=3.0)
    for second in range(12):
        watch.sample(
            float(second),
            [
                CallCount("steady", 10.0 + second, 25 * second, 0),
                CallCount("new", float(second), 25 * second, 20 * second),  # repeats while starting
            ],
        )
    assert watch.repeated_share() == pytest.approx(20 * 5 / (25 * 5 + 25 * 5))  # "new" settled at 3 s
    watch.sample(12.0, [CallCount("steady", 22.0, 300, 0)])  # "new" ended: forgotten
    assert watch.repeated_share() == 0.0
    for second in range(13, 20):  # "steady" falls behind: 5 of 25 slots repeat
        watch.sample(
            float(second), [CallCount("steady", 10.0 + second, 300 + 25 * (second - 12), 5 * (second - 12))]
        )
    assert watch.repeated_share() == pytest.approx(0.2)


async def _offer_body() -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendonly")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return json.dumps({"sdp": sdp, "type": "offer"})


async def _health(http: aiohttp.ClientSession, server: AvatarServer) -> dict[str, object]:
    async with http.get(f"{server.url}healthz") as response:
        return await response.json()  # type: ignore[no-any-return]


@pytest.mark.realtime
async def test_a_server_admits_the_calls_its_measured_cost_carries_and_refuses_the_next(
    render_pool: RenderPool,
) -> None:
    server = AvatarServer(render_pool, ServerSettings(port=0, max_sessions=16))  # measures the avatar
    cost = render_pool.workers[0].costs["face"]
    assert cost.batches > 0 and cost.predict(4) > cost.predict(1) > 0, "measured on the CPU: rows cost"
    one, two = (render_load(cost, n, 1, 4) for n in (1, 2))
    server.admission.load_limit = (one + two) / 2  # room for exactly one call
    runner = await server.start()
    audio, _ = speech_with_pauses(6, [("speech", 3.0)])
    first = AvatarClient(server.url, ArrayAudioTrack(audio, 16_000))
    try:
        async with aiohttp.ClientSession() as http:
            health = await _health(http, server)
            assert health["capacity"] == {"face": {"calls": 0, "supported": 1, "headroom": 1}}
            await first.connect()
            assert (await _health(http, server))["headroom"] == 0
            async with http.post(f"{server.url}offer", data=await _offer_body()) as response:
                refused = await response.json()
                assert response.status == 503 and response.headers["Retry-After"] == "10"
            assert "carries 1 such calls in real time" in refused["error"], refused
            async with http.get(f"{server.url}metrics") as response:
                metrics = await response.text()
            assert 'stableface_capacity_calls{avatar="face"} 1.0' in metrics
            assert 'stableface_headroom_calls{avatar="face"} 0.0' in metrics
            assert 'stableface_offers_rejected_total{reason="capacity"} 1.0' in metrics
            await first.close()
            for _ in range(50):
                if (await _health(http, server))["headroom"] == 1:
                    break
                await asyncio.sleep(0.1)
            second = AvatarClient(server.url, ArrayAudioTrack(audio, 16_000))
            await second.connect()  # the slot is back
            await second.close()
    finally:
        await first.close()
        await runner.cleanup()


@pytest.mark.realtime
async def test_calls_already_falling_behind_refuse_new_ones(render_pool: RenderPool) -> None:
    server = AvatarServer(render_pool, ServerSettings(port=0, max_sessions=16, load_limit=1.0))
    runner = await server.start()
    try:
        # what the server's once-a-second watch would have seen of a call repeating 4% of its slots
        for second in range(4):
            server.admission.repeats.sample(
                float(second), [CallCount("call", 10.0 + second, 25 * second, second)]
            )
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{server.url}offer", data=await _offer_body()) as response:
                refused = await response.json()
                assert response.status == 503
            assert "falling behind real time (4.0% of their frames repeated" in refused["error"]
            assert (await _health(http, server))["recent_repeated_share"] == 0.04
    finally:
        await runner.cleanup()


@pytest.mark.realtime
async def test_the_agent_port_tells_haproxy_the_headroom(render_pool: RenderPool) -> None:
    server = AvatarServer(
        render_pool, ServerSettings(port=0, agent_port=0, max_sessions=3, admission="max-sessions")
    )
    runner = await server.start()

    async def agent_line() -> bytes:
        assert server.settings.agent_port
        reader, writer = await asyncio.open_connection("127.0.0.1", server.settings.agent_port)
        line = await reader.readline()
        writer.close()
        return line

    try:
        assert await agent_line() == b"ready 3%\n"
        audio, _ = speech_with_pauses(7, [("speech", 2.0)])
        client = AvatarClient(server.url, ArrayAudioTrack(audio, 16_000))
        await client.connect()
        assert await agent_line() == b"ready 2%\n"
        await client.close()
        assert agent_reply(0, stopping=False) == agent_reply(5, stopping=True) == b"drain\n"
        assert agent_reply(250, stopping=False) == b"ready 100%\n"
    finally:
        await runner.cleanup()
