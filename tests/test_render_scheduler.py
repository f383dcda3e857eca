"""The render scheduler: live sessions of one avatar rendered as one batch, taking turns under
overload, skipping what is too late — and a session's frames do not depend on its batch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_streaming import SETTINGS, _assert_paced, _timed_live_run, speech_bursts
from virtual_time import CostlyBackend, VirtualClock, run_virtual, use_virtual_time

from engines.backends import StreamShape, load_backend
from engines.backends.base import Backend, ChunkInput, ChunkOutput
from engines.bundle import DEFAULT_AVATAR_DIR, AvatarBundle
from engines.timebase import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME
from realtime.batch_cost import BatchCost
from realtime.engine import AvatarEngine
from realtime.session import OutputFrame, StreamingSession
from realtime.stream import AvatarStream, StreamFrame, render_chunks

SR = SAMPLE_RATE_HZ


@pytest.fixture(scope="module")
def bundle(tiny_avatar: Path) -> AvatarBundle:
    return AvatarBundle.load(tiny_avatar)


@pytest.fixture(scope="module")
def backend(bundle: AvatarBundle) -> Iterator[Backend]:
    """The tiny avatar's ONNX Runtime backend: chunks of 2 frames, up to 4 sessions a call."""
    loaded = load_backend(bundle, "onnxruntime-cpu", StreamShape.for_config(bundle.config, 2, max_batch=4))
    yield loaded
    loaded.close()


def _streams(engine: AvatarEngine, seeds: list[int]) -> list[AvatarStream]:
    """Streams of generated speech bursts (different per seed), fed whole."""
    streams = []
    for seed in seeds:
        stream = engine.new_stream()
        stream.push(speech_bursts([0.2 + 0.1 * seed, 1.2], 2.4, seed=seed))
        stream.finish()
        streams.append(stream)
    return streams


def _image(frame: StreamFrame) -> np.ndarray:
    assert frame.image is not None
    return frame.image


@pytest.mark.parametrize("avatar", ["tiny", "default"])
def test_a_session_renders_the_same_frames_batched_or_alone(
    avatar: str, bundle: AvatarBundle, backend: Backend
) -> None:
    if avatar == "default":
        bundle = AvatarBundle.load(DEFAULT_AVATAR_DIR)
        backend = load_backend(bundle, "onnxruntime-cpu", StreamShape.for_config(bundle.config, max_batch=3))
    engine = AvatarEngine(bundle, backend, SETTINGS)
    seeds = [1, 2, 3]
    chunks = 24 // engine.backend.shape.chunk_frames
    alone = [[f for _ in range(chunks) for f in stream.render_chunk()] for stream in _streams(engine, seeds)]
    batched: list[list[np.ndarray]] = [[] for _ in seeds]
    streams = _streams(engine, seeds)
    for _ in range(chunks):
        for row, frames in enumerate(render_chunks(streams, [True] * len(streams))):
            batched[row] += [_image(frame) for frame in frames]
    for row in range(len(seeds)):
        assert len(batched[row]) == len(alone[row]) == chunks * engine.backend.shape.chunk_frames
        worst = max(
            int(np.abs(_image(a).astype(np.int16) - b).max())
            for a, b in zip(alone[row], batched[row], strict=True)
        )
        assert worst <= 2, f"session {row}: batched differs from alone by {worst}/255"
    # the sessions are different (the check can fail)
    assert max(np.abs(a.astype(np.int16) - b).max() for a, b in zip(batched[0], batched[1], strict=True)) > 10
    if avatar == "default":
        backend.close()


def _engine(
    bundle: AvatarBundle,
    backend: Backend,
    monkeypatch: pytest.MonkeyPatch,
    ms_per_call: float,
    ms_per_row: float = 0.0,
) -> tuple[AvatarEngine, VirtualClock, CostlyBackend]:
    clock = VirtualClock()
    costly = CostlyBackend(backend, clock, ms_per_call / 1000, ms_per_row / 1000)
    engine = AvatarEngine(bundle, costly, SETTINGS)  # type: ignore[arg-type]
    use_virtual_time(monkeypatch, engine, clock)
    return engine, clock, costly


def _live_sessions(
    engine: AvatarEngine, clock: VirtualClock, audios: list[np.ndarray]
) -> list[tuple[StreamingSession, list[OutputFrame], list[float]]]:
    sessions = [StreamingSession(engine, paced=True, clock=clock) for _ in audios]

    async def main() -> list[tuple[list[OutputFrame], list[float]]]:
        return list(
            await asyncio.gather(
                *(_timed_live_run(s, audio, clock) for s, audio in zip(sessions, audios, strict=True))
            )
        )

    runs = run_virtual(main(), clock)
    return [(s, frames, times) for s, (frames, times) in zip(sessions, runs, strict=True)]


def test_four_sessions_that_one_call_serves_all_get_every_frame(
    bundle: AvatarBundle, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Virtual time: a call takes 30 ms whatever its batch (a GPU), a chunk is 80 ms of video: one
    session at a time, four sessions would need 120 ms per 80 ms; batched they all keep up."""
    engine, clock, costly = _engine(bundle, backend, monkeypatch, 30.0)
    audios = [speech_bursts([0.3 + 0.2 * k, 2.0], 4.0, seed=k) for k in range(4)]
    for session, frames, times in _live_sessions(engine, clock, audios):
        _assert_paced(session, frames, times)
        stats = session.stats.snapshot()
        assert stats["chunks_skipped"] == 0 and stats["frames_rendered"] == len(frames), stats
        # only the first slots can miss their frame: the four warm-ups run one after another
        assert stats["frames_skipped"] <= 4, stats
        assert frames[-1].source is not None and frames[-1].source.image is not None
    live = costly.batches[4:]  # after the four warm-ups, which run alone
    assert max(live) >= 3 and sum(live) > 1.5 * len(live), costly.batches
    assert engine.scheduler.stats.batches == len(live)


def test_when_batching_cannot_keep_up_every_session_skips_alike_and_stays_paced(
    bundle: AvatarBundle, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Virtual time: each session in a batch costs 40 ms (a CPU): four sessions need 160 ms per
    80 ms chunk. Nobody falls behind, nobody is starved: the skips are shared."""
    engine, clock, _ = _engine(bundle, backend, monkeypatch, 40.0, 40.0)
    audios = [speech_bursts([0.3, 2.0], 4.0, seed=k) for k in range(4)]
    rendered = []
    for session, frames, times in _live_sessions(engine, clock, audios):
        _assert_paced(session, frames, times)
        stats = session.stats.snapshot()
        assert stats["chunks_skipped"] > 0
        rendered.append(stats["frames_rendered"])
    assert min(rendered) > 0.25 * len(frames) and max(rendered) - min(rendered) <= 0.25 * max(rendered), (
        rendered
    )


async def _bursty_run(
    session: StreamingSession, audio: np.ndarray, clock: VirtualClock, burst_s: float = 0.4
) -> tuple[list[OutputFrame], list[float]]:
    """Like ``_timed_live_run``, but the audio comes ``burst_s`` at a time, ahead of the clock."""

    async def feed() -> None:
        step = int(burst_s * SR)
        started = clock()
        for number, position in enumerate(range(0, len(audio), step)):
            await asyncio.sleep(max(0.0, started + number * burst_s - clock()))
            await session.push_audio(audio[position : position + step], SR)
        session.end_input()

    feeder = asyncio.create_task(feed())
    frames, times = [], []
    async for frame in session.frames():
        frames.append(frame)
        times.append(clock())
    await feeder
    await session.close()
    return frames, times


def test_a_session_fed_in_bursts_cannot_starve_the_others(
    bundle: AvatarBundle, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Virtual time: one session's audio comes 400 ms at a time (five chunks ready at once); the
    scheduler renders one chunk per session per batch, so the steady sessions get every frame."""
    engine, clock, _ = _engine(bundle, backend, monkeypatch, 30.0)
    audio = speech_bursts([0.3, 1.5], 3.0, seed=4)
    steady = [StreamingSession(engine, paced=True, clock=clock) for _ in range(2)]
    bursty = StreamingSession(engine, paced=True, clock=clock)

    async def main() -> list[tuple[list[OutputFrame], list[float]]]:
        return list(
            await asyncio.gather(
                _bursty_run(bursty, audio, clock), *(_timed_live_run(s, audio, clock) for s in steady)
            )
        )

    runs = run_virtual(main(), clock)
    for session, (frames, times) in zip([bursty, *steady], runs, strict=True):
        _assert_paced(session, frames, times)
    for session in steady:
        stats = session.stats.snapshot()
        assert stats["chunks_skipped"] == 0 and stats["frames_rendered"] >= len(runs[1][0]), stats
        assert stats["frames_skipped"] <= 3, stats  # the first slots, behind the three warm-ups
    assert bursty.stats.frames_rendered > 0.8 * len(runs[0][0])


class _StallOnce(CostlyBackend):
    """Every call costs ``seconds_per_chunk``; call number ``at`` stalls for ``stall_s`` more."""

    def __init__(self, inner: Backend, clock: VirtualClock, at: int, stall_s: float) -> None:
        super().__init__(inner, clock, 0.02)
        self.at, self.stall_s = at, stall_s

    def run(self, chunk: ChunkInput) -> ChunkOutput:
        if len(self.batches) == self.at:
            self.clock.charge(self.stall_s)
        return super().run(chunk)


def test_chunks_whose_deadline_passed_are_skipped_and_counted(
    bundle: AvatarBundle, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Virtual time: one renderer call stalls for 600 ms; the chunks whose every frame's slot went
    by meanwhile are skipped, not rendered late, and the session renders on time again after."""
    clock = VirtualClock()
    stalling = _StallOnce(backend, clock, at=20, stall_s=0.6)
    engine = AvatarEngine(bundle, stalling, SETTINGS)  # type: ignore[arg-type]
    use_virtual_time(monkeypatch, engine, clock)
    audio = speech_bursts([0.3, 1.5], 3.0, seed=6)
    [(session, frames, times)] = _live_sessions(engine, clock, [audio])
    _assert_paced(session, frames, times)
    stats = session.stats.snapshot()
    chunk_ms = engine.backend.shape.chunk_frames * 40
    assert stats["deadlines_missed"] >= (600 - 2 * chunk_ms) // chunk_ms, stats
    assert stats["chunks_skipped"] >= stats["deadlines_missed"]
    assert stats["max_lag_ms"] <= 600 + 2 * chunk_ms, stats
    assert all(f.source is not None and f.source.image is not None for f in frames[-10:])
    assert not any(f.skipped for f in frames[-10:]), "on time again after the stall"
    assert len(frames) == int(np.ceil(len(audio) / SAMPLES_PER_FRAME)) + engine.delay_frames


def test_more_sessions_than_max_batch_wait_for_the_next_batch(
    bundle: AvatarBundle, tiny_avatar: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Virtual time: max_batch 2 and five sessions fed ahead (always a chunk ready): while one batch
    runs, three sessions wait; calls never exceed two rows, the third waits again (counted; served
    longest ago first) and every session still gets every chunk."""
    small = load_backend(bundle, "onnxruntime-cpu", StreamShape.for_config(bundle.config, 2, max_batch=2))
    try:
        engine, clock, costly = _engine(bundle, small, monkeypatch, 10.0)
        audios = [speech_bursts([0.3, 1.5], 3.0, seed=k) for k in range(5)]
        sessions = [StreamingSession(engine, paced=True, clock=clock) for _ in audios]

        async def main() -> list[tuple[list[OutputFrame], list[float]]]:
            runs = (_bursty_run(s, a, clock) for s, a in zip(sessions, audios, strict=True))
            return list(await asyncio.gather(*runs))

        for session, (frames, times) in zip(sessions, run_virtual(main(), clock), strict=True):
            _assert_paced(session, frames, times)
            assert session.stats.chunks_skipped == 0, session.stats.snapshot()
            assert session.stats.frames_skipped <= 5, session.stats.snapshot()
        assert max(costly.batches) == 2 and engine.scheduler.stats.deferred > 0
    finally:
        small.close()


def test_a_batch_cut_off_by_its_closing_event_loop_does_not_stall_the_next_loop(
    bundle: AvatarBundle, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine outlives an event loop that closed with a batch in flight (``asyncio.run`` per
    benchmark step, say): that batch can never deliver, and sessions on the next loop are still
    rendered."""
    engine, clock, _ = _engine(bundle, backend, monkeypatch, 30.0)
    gone = asyncio.new_event_loop()
    gone.close()
    engine.scheduler._busy, engine.scheduler._loop = True, gone  # as a cut-off batch leaves it
    audio = speech_bursts([0.3], 2.0, seed=1)
    [(session, frames, times)] = _live_sessions(engine, clock, [audio])
    _assert_paced(session, frames, times)
    assert session.stats.frames_rendered > 0.9 * len(frames), session.stats.snapshot()


class _PausingBackend:
    """A real backend whose first call with two sessions waits (on the worker) until released."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name, self.shape = inner.name, inner.shape
        self.in_batch, self.release = threading.Event(), threading.Event()

    def run(self, chunk: ChunkInput) -> ChunkOutput:
        if int(chunk.eroded.shape[0]) == 2 and not self.in_batch.is_set():
            self.in_batch.set()
            self.release.wait(10.0)
        return self.inner.run(chunk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_session_closed_while_its_chunk_is_in_a_batch_leaves_the_batch_whole(
    bundle: AvatarBundle, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller hangs up while the worker renders its chunk with another's: the batch finishes for
    both (the closed session's stream is held by the batch), nothing fails, the other goes on."""
    pausing = _PausingBackend(backend)
    engine = AvatarEngine(bundle, pausing, SETTINGS)
    try:
        leaving, staying = (StreamingSession(engine, paced=True) for _ in range(2))
        audio = speech_bursts([0.2, 0.9], 1.6, seed=3)

        async def run(session: StreamingSession) -> list[OutputFrame]:
            await session.push_audio(audio, SR)  # all at once: chunks always ready, due in turn
            session.end_input()
            return [frame async for frame in session.frames()]

        stay = asyncio.create_task(run(staying))
        leave = asyncio.create_task(run(leaving))
        met = await asyncio.to_thread(pausing.in_batch.wait, 10.0)
        assert met, ("the two sessions met in one batch", engine.scheduler.stats)
        await leaving.close()
        pausing.release.set()
        frames = await stay
        leave.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leave
    finally:
        pausing.release.set()
        engine.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert staying.stats.frames_rendered > 0.8 * len(frames), staying.stats.snapshot()


def test_the_batch_cost_learns_what_a_row_adds() -> None:
    """A CPU (each row its own share) and a GPU (a batch costs what one chunk does)."""
    cpu, gpu = BatchCost(), BatchCost()
    assert cpu.predict(4) == 0.0  # nothing seen: no estimate
    for rows in [1, 3, 2, 4, 1, 2, 3] * 4:
        cpu.observe(rows, 0.005 + 0.04 * rows)
        gpu.observe(rows, 0.012)
    assert cpu.per_row_s == pytest.approx(0.04) and cpu.fixed_s == pytest.approx(0.005)
    assert gpu.per_row_s == pytest.approx(0.0, abs=1e-9) and gpu.predict(8) == pytest.approx(0.012)
    one_size = BatchCost()
    for _ in range(5):
        one_size.observe(2, 0.05)
    assert one_size.per_row_s == 0.0 and one_size.predict(6) == pytest.approx(0.05)  # until sizes vary


def test_the_batch_cost_keeps_its_slope_while_batches_keep_one_size() -> None:
    """One call for minutes gives batches of one row only: the slope the probe measured stays, so
    a second call is not taken for free."""
    cost = BatchCost()
    for rows in [1, 4] * 6:
        cost.observe(rows, 0.004 + 0.01 * rows)
    for _ in range(2000):
        cost.observe(1, 0.016)  # a little slower now: the level follows, the slope stays
    assert cost.per_row_s == pytest.approx(0.01, rel=0.1)  # (it moved a little before it froze)
    assert cost.predict(1) == pytest.approx(0.016) and cost.predict(2) > 0.016 + 0.008
