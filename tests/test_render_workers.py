"""Render workers in their own processes: frames through shared memory, a worker killed mid-call
ends only its own calls (with a reason the caller is told) and is replaced, a hung one is killed,
and a worker that cannot load its avatars stops the server's start with a one-line reason."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from speech_signals import speech_with_pauses

from engines.bundle import DEFAULT_AVATAR_DIR
from engines.errors import InputError
from realtime.client import ArrayAudioTrack, AvatarClient
from realtime.frame_ring import FrameRing
from realtime.remote_session import RenderWorkerLost
from realtime.server import AvatarServer
from realtime.settings import ServerSettings
from realtime.worker_placement import Placement, place_workers, visible_gpus
from realtime.worker_pool import RenderPool


def test_a_frame_ring_hands_over_images_and_reports_overwritten_ones() -> None:
    ring = FrameRing.create((4, 6, 3), slots=3)
    reader_side = ring
    writer_side = FrameRing.attach(ring.name, (4, 6, 3), 3)
    try:
        images = [np.full((4, 6, 3), k, np.uint8) for k in range(5)]
        assert reader_side.read(0) is None, "an empty slot holds no frame"
        for k in range(3):
            writer_side.write(k, images[k])
        assert all(np.array_equal(reader_side.read(k), images[k]) for k in range(3))  # type: ignore[arg-type]
        writer_side.write(3, images[3])  # slot 0 reused: frame 0 is gone, never half of two frames
        assert reader_side.read(0) is None
        assert np.array_equal(reader_side.read(3), images[3])  # type: ignore[arg-type]
    finally:
        writer_side.close()
        ring.close()
    with pytest.raises(FileNotFoundError):
        FrameRing.attach(ring.name, (4, 6, 3), 3)  # the owner unlinked it


def test_workers_get_one_gpu_each_or_their_own_group_of_cores(tmp_path: Path) -> None:
    assert place_workers(1, [0, 1, 2, 3], ["0", "1"]) == [Placement(None, None)]  # one keeps it all
    assert [p.gpu for p in place_workers(3, [0, 1], ["2", "5"])] == ["2", "5", "2"]
    assert [p.cores for p in place_workers(2, [3, 0, 1, 2], [])] == [(0, 1), (2, 3)]
    assert [p.cores for p in place_workers(3, [0, 1], [])] == [(0,), (0,), (1,)]  # more workers than cores
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1, 3"}) == ["1", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    driver = tmp_path / "gpus"
    driver.mkdir()
    for bus in ("0000:17:00.0", "0000:65:00.0"):
        (driver / bus).mkdir()
    assert visible_gpus({}, driver) == ["0", "1"]
    assert visible_gpus({}, tmp_path / "absent") == []


def test_a_worker_that_cannot_load_its_avatar_stops_the_start_with_its_reason(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(InputError, match="avatar"):
        RenderPool.start([f"face={tmp_path}"], "onnxruntime-cpu")
    assert time.monotonic() - started < 60


@pytest.fixture
async def two_workers(tiny_avatar: Path) -> AsyncIterator[RenderPool]:
    # A `tiny` avatar: the workers' isolation and replacement are under test, not a 2-core machine's
    # capacity. With the `live` default avatar two calls, the server, this test's decoding client and
    # a replacement worker's start share the 2 cores, and the survivor repeated 23 of 145 frames.
    pool = RenderPool.start([f"face={tiny_avatar}"], "onnxruntime-cpu", max_batch=4, workers=2)
    try:
        yield pool
    finally:
        pool.close()


async def _frames_in(client: AvatarClient, seconds: float) -> int:
    before = client.frames_received
    await asyncio.sleep(seconds)
    return client.frames_received - before


@pytest.mark.realtime
async def test_a_killed_render_worker_ends_only_its_calls_and_is_replaced(two_workers: RenderPool) -> None:
    pool = two_workers
    server = AvatarServer(pool, ServerSettings(port=0, max_sessions=4, admission="max-sessions"))
    runner = await server.start()
    audio, _ = speech_with_pauses(5, [("speech", 30.0)])
    doomed = AvatarClient(server.url, ArrayAudioTrack(audio, 16_000), keep_images=False)
    survivor = AvatarClient(server.url, ArrayAudioTrack(audio, 16_000), keep_images=False)
    try:
        await doomed.connect()
        await survivor.connect()
        assert [w["calls"] for w in pool.health()] == [1, 1]
        assert await _frames_in(survivor, 2.0) >= 45
        by_worker = {w.number: w.calls_by_avatar()["face"] for w in pool.workers}
        assert by_worker == {0: 1, 1: 1}
        victim = pool.workers[0]
        doomed_worker_calls = {id(call) for call in victim.open_calls()}
        doomed_session = next(s for s in server.sessions if id(s.session) in doomed_worker_calls)
        survivor_session = next(s for s in server.sessions if s is not doomed_session)
        skipped_before = survivor_session.session.stats.frames_skipped
        out_before = survivor_session.session.stats.frames_out

        victim.kill()
        killed = time.monotonic()
        while doomed_session.reason is None and time.monotonic() - killed < 5:
            await asyncio.sleep(0.05)
        ended_s = time.monotonic() - killed
        assert doomed_session.reason == "render worker died", doomed_session.reason
        assert ended_s < 2.0, "the call ends at once, it does not hang"  # 0.05 s measured

        # the other worker's call goes on at 25 fps while the dead one is replaced beside it
        received = await _frames_in(survivor, 3.0)
        await pool.wait_all_ready(60)
        assert pool.restarts == 1 and pool.workers[0] is not victim
        stats = survivor_session.session.stats
        sent, repeated = stats.frames_out - out_before, stats.frames_skipped - skipped_before
        assert survivor_session.reason is None
        assert received >= 3.0 * 24 - 5, received  # 75 of 75 measured
        # 0 of 114-124 measured alone; 5 of 161 in a loaded CI run, where the replacement's start
        # (imports and model load, pinned to the dead worker's core) shares a 2-core machine with
        # the server, the survivor and this test's own decoding client
        assert repeated <= max(3, 0.05 * sent), (repeated, sent)

        # the caller of the dead worker was told why; a new call lands on the new worker
        dead_client = next(c for c in (doomed, survivor) if c.recording.errors)
        assert dead_client is doomed and doomed.recording.errors == ["render worker died"]
        third = AvatarClient(server.url, ArrayAudioTrack(audio, 16_000), keep_images=False)
        await third.connect()
        # A working call, not its full rate yet: its first second waits for the call's first audio
        # and warms the new worker's caches (24 frames in its first 1.5 s in one CI run).
        assert await _frames_in(third, 2.0) >= 25
        assert pool.workers[0].calls_by_avatar()["face"] == 1
        await third.close()
    finally:
        for client in (doomed, survivor):
            await client.close()
        await runner.cleanup()


async def test_a_hung_render_worker_is_killed_so_its_calls_end_instead_of_freezing() -> None:
    pool = RenderPool.start(
        [f"face={DEFAULT_AVATAR_DIR}"], "onnxruntime-cpu", max_batch=4, measure=False, hung_after_s=2.0
    )
    try:
        worker = pool.workers[0]
        call = worker.open_call("face")
        await call.push_audio(np.zeros(16_000, np.float32))
        frames = call.frames()
        for _ in range(5):
            await anext(frames)
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGSTOP)  # alive, but silent: stopped, deadlocked, swapping
        stopped = time.monotonic()
        with pytest.raises(RenderWorkerLost, match="render worker died"):
            async with asyncio.timeout(10):
                while True:
                    await anext(frames)
        assert 1.9 <= time.monotonic() - stopped < 6.0  # 2 s silent (its last frame: just before the stop)
        await call.close()
        await pool.wait_all_ready(60)
        assert pool.restarts == 1
    finally:
        pool.close()
