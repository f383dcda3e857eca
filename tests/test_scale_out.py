"""Scale-out: two ``stableface serve`` processes behind a real HAProxy with the project's
``deploy/haproxy.cfg``: calls land on both, a full server is skipped, and killing one server
leaves the other's calls untouched."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import pytest
from speech_signals import speech_with_pauses

from realtime.client import ArrayAudioTrack, AvatarClient, OfferRefused
from realtime.serve_process import serve_in_process

pytestmark = [
    pytest.mark.realtime,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy (apt-get install haproxy)"),
]
CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy.cfg"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _health(url: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}healthz") as response:
        return await response.json()  # type: ignore[no-any-return]


async def _until(check: object, timeout_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.2)


async def _call(url: str, seed: int) -> AvatarClient:
    audio, _ = speech_with_pauses(seed, [("speech", 2.0), ("silence", 1.0)] * 4)
    client = AvatarClient(url, ArrayAudioTrack(audio, 16_000), keep_images=False)
    await client.connect()
    return client


async def test_haproxy_spreads_calls_by_headroom_and_survives_a_dead_server(
    tiny_avatar: Path, tmp_path: Path
) -> None:
    agents = {"a": _free_port(), "b": _free_port()}
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                serve_in_process(
                    [
                        "--avatar",
                        f"tiny={tiny_avatar}",
                        "--max-sessions",
                        str(cap),
                        "--admission",  # headroom = cap - calls: the placement is known in advance
                        "max-sessions",
                        "--agent-port",
                        str(agents[name]),
                        "--trusted-proxy",
                        "127.0.0.1",
                    ],
                    tmp_path / f"serve-{name}.log",
                    verbose=True,
                )
            )
            for name, cap in (("a", 1), ("b", 2))
        }
        lb_port = _free_port()
        environment = {
            **os.environ,
            "LB_BIND": f"127.0.0.1:{lb_port}",
            "SERVER_A": servers["a"].url.removeprefix("http://").rstrip("/"),
            "SERVER_B": servers["b"].url.removeprefix("http://").rstrip("/"),
            "AGENT_A": str(agents["a"]),
            "AGENT_B": str(agents["b"]),
        }
        log = (tmp_path / "haproxy.log").open("w")
        proxy = subprocess.Popen(
            ["haproxy", "-db", "-f", str(CONFIG)], env=environment, stdout=log, stderr=subprocess.STDOUT
        )
        stack.callback(proxy.wait, 10)
        stack.callback(proxy.terminate)
        stack.callback(log.close)
        lb = f"http://127.0.0.1:{lb_port}/"

        async def proxy_routes() -> bool:
            try:
                return (await _health(lb))["status"] == "ok"
            except aiohttp.ClientError:
                return False

        await _until(proxy_routes)
        calls = [await _call(lb, seed) for seed in range(3)]  # a takes 1, b takes 2: all fit
        placed = {name: (await _health(server.url))["sessions"] for name, server in servers.items()}
        assert placed == {"a": 1, "b": 2}, placed
        # Both full: refused through the proxy once its agent checks (every 1 s) have seen it. (An
        # offer in the very moment a server's agent turns it to drain, while HAProxy retries it, can
        # get a closed connection instead of the 503: seen once in ~20 runs, docs/scale-out.md.)
        await asyncio.sleep(1.5)
        with pytest.raises(OfferRefused) as refused:
            await _call(lb, 9)
        assert refused.value.status == 503

        servers["a"].process.kill()  # the server, not its calls' peers, dies
        # frames already on their way (in the network stack, the client's jitter buffer, a loaded
        # client's decoder: 16 frames = 0.64 s once in CI) still arrive after the kill; count after them
        await asyncio.sleep(1.0)
        counts = [c.frames_received for c in calls]
        await asyncio.sleep(3.0)
        grown = [c.frames_received - before for c, before in zip(calls, counts, strict=True)]
        assert sorted(grown)[0] < 10 <= sorted(grown)[1], f"one call (a's) stopped, b's went on: {grown}"
        assert all(g >= 60 for g in sorted(grown)[1:]), grown  # ~75 frames in 3 s at 25 fps
        assert (await _health(servers["b"].url))["sessions"] == 2

        async def a_taken_out() -> bool:
            async with aiohttp.ClientSession() as http, http.get(f"{lb}healthz") as response:
                return response.status == 200 and (await response.json())["sessions"] == 2

        await _until(a_taken_out)  # the page and /healthz now come from b
        with pytest.raises(OfferRefused) as refused:  # b is full, a is gone
            await _call(lb, 10)
        assert refused.value.status == 503 and "full or down" in str(refused.value.body["error"])
        for client in calls:
            await client.close()
    haproxy_log = (tmp_path / "haproxy.log").read_text()
    assert "/offer" in haproxy_log
