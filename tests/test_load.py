"""Load: concurrent aiortc callers on one `tiny` avatar server process for 34 s.

4 callers in the default run, 8 with ``-m slow``. The server and every caller share a 2-core
machine: at 8 calls the server needs 200 frames/s (`tiny` saturates at 125) and the callers
compete with it for the CPU, so a starved caller can miss the server's ICE consent checks (0.5 s
to answer each) and have its call dropped after 30 s; the 8-call run sits at the machine's edge
and fails intermittently there, while 4 calls stay within its capacity. See docs/serving.md,
"Load on a 2-core CPU".

The callers run in processes of 2 (real callers are separate machines): 8 calls decoded in one
Python process made that process's event loop the bottleneck — datagrams queued long enough that
ICE consent checks (0.5 s each) timed out and calls ended after ~30 s, while the server was fine.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from speech_signals import speech_with_pauses

from realtime.client import ArrayAudioTrack, AvatarClient
from realtime.serve_process import serve_in_process

pytestmark = pytest.mark.realtime

CALLS_PER_PROCESS = 2
# Past the 30 s at which a caller starved of CPU loses its call (missed ICE consent checks).
CALL_S = 34.0
WARM_S = 1.5
# RSS is read once the calls are in steady state and again near their end: it must not grow with time.
STEADY_S = 10.0


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match
    return int(match.group(1)) / 1024


async def _call(url: str, seconds: float, seed: int) -> AvatarClient:
    audio, _ = speech_with_pauses(seed, [("speech", 2.0), ("silence", 1.0)] * 3)
    client = AvatarClient(url, ArrayAudioTrack(audio, 16_000), keep_images=False)
    await client.connect()
    await asyncio.sleep(seconds)
    return client


async def _health(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}healthz") as response:
        return await response.json()


async def _sessions(url: str) -> int:
    return int((await _health(url))["sessions"])


async def _until_no_sessions(url: str) -> None:
    for _ in range(100):
        if await _sessions(url) == 0:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads server memory from /proc")
@pytest.mark.parametrize("call_count", [4, pytest.param(8, marks=pytest.mark.slow)])
async def test_callers_for_over_thirty_seconds(call_count: int, tiny_avatar: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "serve.log"
    arguments = ["--avatar", f"tiny={tiny_avatar}", "--max-sessions", str(call_count)]
    # The caller processes start with the server and wait on stdin for its URL.
    callers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("load_caller.py")),
            str(CALLS_PER_PROCESS),
            str(CALL_S),
            str(100 * index),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parent,
        )
        for index in range(call_count // CALLS_PER_PROCESS)
    ]
    try:
        with serve_in_process(arguments, log_path, verbose=True, stop_timeout_s=30) as server:
            url = server.url

            # As many short calls as the test makes: export, caches, and the allocators' high-water
            # marks of the biggest batch, so that what is left after the calls is what they leaked.
            warm = await asyncio.gather(*(_call(url, WARM_S, 99 + index) for index in range(call_count)))
            await asyncio.gather(*(client.close() for client in warm))
            await _until_no_sessions(url)
            baseline_mb = _rss_mb(server.process.pid)

            for caller in callers:
                assert caller.stdin is not None
                caller.stdin.write(f"{url}\n".encode())
                await caller.stdin.drain()
            await asyncio.sleep(STEADY_S)
            steady_mb = _rss_mb(server.process.pid)
            await asyncio.sleep(CALL_S - 5 - STEADY_S)
            alive = await _sessions(url)
            peak_mb = _rss_mb(server.process.pid)
            outputs = await asyncio.gather(*(caller.communicate() for caller in callers))
            calls = [
                call for stdout, _ in outputs for call in json.loads(stdout.decode().strip().splitlines()[-1])
            ]
            health = await _health(url)
            await _until_no_sessions(url)  # and the server's collection once idle
            after_mb = _rss_mb(server.process.pid)
            in_memory = (await _health(url))["sessions_in_memory"]
    finally:
        for caller in callers:
            if caller.returncode is None:
                caller.kill()
                await caller.wait()
    log_text = log_path.read_text()
    endings = "\n".join(line for line in log_text.splitlines() if " ended: " in line or "Consent" in line)
    received = [call["frames"] for call in calls]
    last_5s = [call["last_5s"] for call in calls]
    print(
        f"frames received per caller {received}; in the last 5 s {last_5s}; server RSS "
        f"baseline {baseline_mb:.0f} MB, with {call_count} calls {steady_mb:.0f} MB at {STEADY_S:.0f} s and "
        f"{peak_mb:.0f} MB at {CALL_S - 5:.0f} s, after {after_mb:.0f} MB; "
        f"server event-loop lag max {health['max_event_loop_lag_ms']} ms"
    )
    assert alive == call_count, f"every call was still up at the end; server log:\n{endings}"
    assert [call["state"] for call in calls] == ["connected"] * call_count, calls
    assert all(n >= 0.9 * CALL_S * 25 for n in received), received
    assert all(n >= 0.8 * 5 * 25 for n in last_5s), last_5s  # still flowing at the end
    assert server.process.returncode == 0
    assert not re.search(r"^(ERROR|CRITICAL)|Traceback", log_text, re.M), log_text[-3000:]
    assert peak_mb <= 1.05 * steady_mb, ("grew while serving", steady_mb, peak_mb)
    assert in_memory == 0, f"{in_memory} ended calls are still in the server's memory"
    # What glibc and ONNX Runtime keep of the calls' high-water marks: 2-6% measured after 30-90 s
    # of calls, not growing with more of them (docs/serving.md); a call's leaked frames would add
    # 10% here in a few calls.
    assert after_mb <= 1.10 * baseline_mb, ("kept after the calls", baseline_mb, after_mb)
