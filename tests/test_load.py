"""Load: 8 concurrent aiortc callers on one `tiny` avatar server process for 60 s.

Marked ``slow`` because it does not pass reliably on the team's 2-core machine yet: with 8 calls,
aioice's ICE consent checks (one 0.5 s STUN transaction every ~5 s, six misses close the
connection, RFC 7675) time out in both directions and calls end after about 30 s (seen in 5 of 8
runs; 4 calls survive). Memory returns to within 6% of the baseline either way. Run it with
``./test.sh -m slow -k eight``; see the issue #7 note.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from mouth_probe import speech_with_pauses

from realtime.client import ArrayAudioTrack, AvatarClient

CALLERS = 8
CALL_S = 60.0


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
        return await response.json()  # type: ignore[no-any-return]


async def _sessions(url: str) -> int:
    return int((await _health(url))["sessions"])


async def _watch_loop(lags: list[float]) -> None:
    while True:
        started = time.monotonic()
        await asyncio.sleep(0.1)
        lags.append(1000 * (time.monotonic() - started - 0.1))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads server memory from /proc")
async def test_eight_callers_for_a_minute(tiny_avatar: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [
                *[sys.executable, "-m", "stableface", "-v", "serve"],
                "--avatar",
                f"tiny={tiny_avatar}",
                "--port",
                "0",
                "--max-sessions",
                str(CALLERS),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        assert server.stdout is not None
        match = re.search(r"(http://\S+/)", server.stdout.readline())
        assert match, log_path.read_text()[-2000:]
        url = match.group(1)

        warm = await _call(url, 3.0, 99)  # first call: allocator arenas, export, caches
        await warm.close()
        await asyncio.sleep(2.0)
        baseline_mb = _rss_mb(server.pid)

        client_lags: list[float] = []
        watch = asyncio.get_running_loop().create_task(_watch_loop(client_lags))
        clients = await asyncio.gather(*(_call(url, CALL_S, seed) for seed in range(CALLERS)))
        watch.cancel()
        health = await _health(url)
        alive = int(health["sessions"])
        received = [c.frames_received for c in clients]
        last_minute = [
            sum(1 for v in c.recording.video if v.arrival_s > c.recording.video[-1].arrival_s - 5)
            for c in clients
        ]
        peak_mb = _rss_mb(server.pid)
        await asyncio.gather(*(c.close() for c in clients))
        for _ in range(100):
            if await _sessions(url) == 0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)
        after_mb = _rss_mb(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    log_text = log_path.read_text()
    endings = "\n".join(
        line for line in log_text.splitlines() if " ended: " in line or "onsent" in line or "onflict" in line
    )
    print(
        f"frames received per caller {received}; in the last 5 s {last_minute}; server RSS "
        f"baseline {baseline_mb:.0f} MB, with {CALLERS} calls {peak_mb:.0f} MB, after {after_mb:.0f} MB; "
        f"event-loop lag: server max {health['max_event_loop_lag_ms']} ms, callers' process p99 "
        f"{np.percentile(client_lags, 99):.0f} ms max {max(client_lags):.0f} ms"
    )
    assert alive == CALLERS, f"every call was still up at the end; server log:\n{endings}"
    assert all(n >= 0.9 * CALL_S * 25 for n in received), received
    assert all(n >= 0.8 * 5 * 25 for n in last_minute), last_minute  # still flowing at the end
    assert server.returncode == 0
    assert not re.search(r"^(ERROR|CRITICAL)|Traceback", log_text, re.M), log_text[-3000:]
    assert after_mb <= 1.1 * baseline_mb, (baseline_mb, after_mb)
