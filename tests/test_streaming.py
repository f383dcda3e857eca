"""The streaming core: same frames whatever the push sizes, A/V sync, never falling behind, idle,
many sessions on one model."""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from virtual_time import CostlyBackend, VirtualClock, run_virtual, use_virtual_time

from engines.backends import StreamShape, load_backend
from engines.backends.base import Backend, ChunkInput, ChunkOutput
from engines.bundle import AvatarBundle
from engines.errors import InputError
from engines.timebase import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME
from realtime.engine import AvatarEngine
from realtime.file_stream import stream_file
from realtime.session import OutputFrame, StreamingSession
from realtime.settings import StreamSettings, output_delay_frames
from realtime.stream import StreamFrame

SR = SAMPLE_RATE_HZ
SETTINGS = StreamSettings(chunk_frames=2)


def speech_bursts(onsets_s: list[float], total_s: float, burst_s: float = 0.6, seed: int = 0) -> np.ndarray:
    """Band-limited noise bursts (about -20 dBFS) starting exactly at ``onsets_s``, silence elsewhere."""
    rng = np.random.default_rng(seed)
    audio = np.zeros(int(total_s * SR), np.float32)
    kernel = np.hanning(9) / np.hanning(9).sum()
    for onset in onsets_s:
        start, length = int(onset * SR), int(burst_s * SR)
        noise = np.convolve(rng.standard_normal(length), kernel, mode="same")
        syllables = 0.55 + 0.45 * np.sin(np.linspace(0, 2 * np.pi * 4 * burst_s, length)) ** 2
        audio[start : start + length] = (0.3 * noise * syllables).astype(np.float32)
    return audio


@pytest.fixture(scope="module")
def engine(tiny_avatar: Path) -> Iterator[AvatarEngine]:
    loaded = AvatarEngine.load(tiny_avatar, "onnxruntime-cpu", SETTINGS)
    yield loaded
    loaded.close()


async def _run_unpaced(engine: AvatarEngine, audio: np.ndarray, seed: int = 0) -> list[OutputFrame]:
    session = StreamingSession(engine, paced=False)
    rng = np.random.default_rng(seed)

    async def feed() -> None:
        position = 0
        while position < len(audio):
            size = int(rng.integers(SR // 1000, SR // 2 + 1))  # 1 ms .. 500 ms
            await session.push_audio(audio[position : position + size], SR)
            position += size
            await asyncio.sleep(0)
        session.end_input()

    feeder = asyncio.create_task(feed())
    frames = [frame async for frame in session.frames()]
    await feeder
    await session.close()
    return frames


async def _run_live(session: StreamingSession, audio: np.ndarray, packet_ms: int = 20) -> list[OutputFrame]:
    """Push audio in packets on an absolute schedule, as a capture device would, and collect frames."""
    return [frame async for frame in _paced_frames(session, audio, packet_ms)]


async def _paced_frames(
    session: StreamingSession,
    audio: np.ndarray,
    packet_ms: int = 20,
    clock: Callable[[], float] = time.monotonic,
    stall: tuple[float, float] | None = None,
) -> AsyncIterator[OutputFrame]:
    """Frames of ``session`` while ``audio`` is pushed in packets on ``clock``'s schedule; during
    ``stall`` = (from_s, to_s) nothing is sent, and what was held back goes at once at its end."""
    packet = SR * packet_ms // 1000

    async def feed() -> None:
        started = clock()
        for number, position in enumerate(range(0, len(audio), packet)):
            due = number * packet_ms / 1000
            if stall is not None and stall[0] <= due < stall[1]:
                due = stall[1]
            await asyncio.sleep(max(0.0, started + due - clock()))
            await session.push_audio(audio[position : position + packet], SR)
        session.end_input()

    feeder = asyncio.create_task(feed())
    async for frame in session.frames():
        yield frame
    await feeder


def test_the_delay_budget_follows_the_chunk_look_ahead_and_compute() -> None:
    assert output_delay_frames(2, 2, 70.0) == 6  # 4 x 40 + 7.5 + 70 = 237.5 ms -> 240 ms
    assert output_delay_frames(4, 2, 70.0) == 8
    assert output_delay_frames(1, 2, 0.0) == 4


def test_streaming_gives_the_same_frames_whatever_the_push_sizes(engine: AvatarEngine) -> None:
    audio = speech_bursts([0.3, 1.4], 2.6, seed=1)
    reference = list(stream_file(engine, audio))
    assert len(reference) == int(np.ceil(len(audio) / SAMPLES_PER_FRAME))
    delay = engine.delay_frames
    for seed in (0, 1):
        frames = asyncio.run(_run_unpaced(engine, audio, seed))
        assert [f.index for f in frames] == list(range(len(reference) + delay))
        assert not any(f.skipped for f in frames)
        differences = [np.abs(_pixels(f) - _pixels(reference[f.index - delay])).max() for f in frames[delay:]]
        assert max(differences) <= 2, max(differences)
        out = np.concatenate([f.audio for f in frames])
        shift = delay * SAMPLES_PER_FRAME - _lead_samples(engine)
        assert not out[:shift].any()
        np.testing.assert_array_equal(out[shift : shift + len(audio)], audio)  # sample-exact


def _pixels(frame: OutputFrame | StreamFrame) -> np.ndarray:
    assert frame.image is not None
    return frame.image.astype(int)


def _source(frame: OutputFrame) -> StreamFrame:
    assert frame.source is not None
    return frame.source


def _lead_samples(engine: AvatarEngine) -> int:
    return round(engine.settings.audio_lead_ms * SR / 1000)


def _onsets(active: np.ndarray, quiet_before: int) -> list[int]:
    """Indices where ``active`` turns on after at least ``quiet_before`` inactive steps."""
    found: list[int] = []
    last_active = -quiet_before - 1
    for index in (int(i) for i in np.flatnonzero(active)):
        if index - last_active > quiet_before:
            found.append(index)
        last_active = index
    return found


def test_lips_and_sound_leave_together(engine: AvatarEngine) -> None:
    onsets = [0.52, 1.84, 3.16]
    audio = speech_bursts(onsets, 4.2, seed=2)
    frames = asyncio.run(_run_unpaced(engine, audio))
    out_audio = np.concatenate([f.audio for f in frames])
    audio_onsets = [i / SR for i in _onsets(np.abs(out_audio) > 0.01, SR // 2)]
    assert len(audio_onsets) == 3, audio_onsets
    opening = np.array([_source(f).inner_lip_area for f in frames])
    voiced = np.array([_source(f).voice for f in frames]) > 0.5
    rest, speaking = np.median(opening[~voiced]), np.median(opening[voiced])
    assert speaking > rest, "the mouth must open for speech"
    mouth_onsets = [k * 0.04 for k in _onsets(opening > rest + 0.5 * (speaking - rest), 12)]
    assert len(mouth_onsets) == 3, mouth_onsets
    # The sound leaves audio_lead_ms ahead of its lips (it takes that much longer to arrive).
    lead_s = engine.settings.audio_lead_ms / 1000
    for sound, mouth in zip(audio_onsets, mouth_onsets, strict=True):
        assert abs(sound + lead_s - mouth) <= 0.040 + 1e-3, (sound, mouth)


def test_silence_closes_the_mouth_and_plays_the_reference_on(engine: AvatarEngine) -> None:
    audio = speech_bursts([0.2], 7.0, burst_s=1.0, seed=3)
    audio[int(6.0 * SR) : int(7.0 * SR)] = speech_bursts([0.0], 1.0, burst_s=1.0, seed=4)
    frames = asyncio.run(_run_unpaced(engine, audio))
    delay = engine.delay_frames
    idle = [f for f in frames if 2.2 <= (f.index - delay) * 0.04 <= 5.9]  # speech ends at 1.2 s
    opening = np.array([_source(f).inner_lip_area for f in idle])
    speech = [_source(f).inner_lip_area for f in frames if 0.3 <= (f.index - delay) * 0.04 <= 1.1]
    assert opening.max() - opening.min() < 1e-6, "the mouth stays still in silence"
    assert opening.max() < np.median(speech)
    assert opening.max() <= engine.frames.inner_lip_area(engine.frames.rest_mouth) + 1e-6
    assert len({_source(f).reference_index for f in idle}) > 50, "the reference video plays on"

    def jump(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())

    reference = engine.frames.reference
    own = max(jump(reference.full_frame(i), reference.full_frame(i + 1)) for i in range(len(reference) - 1))
    around = [f for f in frames if 1.0 <= (f.index - delay) * 0.04 <= 6.3]  # both transitions included
    worst = max(jump(a.image, b.image) for a, b in itertools.pairwise(around))
    assert worst <= own, (worst, own)


@pytest.fixture(scope="module")
def bundle(tiny_avatar: Path) -> AvatarBundle:
    return AvatarBundle.load(tiny_avatar)


@pytest.fixture(scope="module")
def backends(bundle: AvatarBundle) -> Iterator[dict[int, Backend]]:
    """ONNX Runtime backends of the tiny avatar by chunk size, shared by the virtual-time engines."""
    loaded = {
        c: load_backend(bundle, "onnxruntime-cpu", StreamShape.for_config(bundle.config, c)) for c in (2, 4)
    }
    yield loaded
    for backend in loaded.values():
        backend.close()


def _virtual_engine(
    bundle: AvatarBundle,
    backend: Backend,
    ms_per_chunk: float,
    monkeypatch: pytest.MonkeyPatch,
    settings: StreamSettings = SETTINGS,
) -> tuple[AvatarEngine, VirtualClock]:
    """An engine whose worker runs in virtual time and whose renderer costs ``ms_per_chunk``."""
    clock = VirtualClock()
    costly = CostlyBackend(backend, clock, ms_per_chunk / 1000)
    engine = AvatarEngine(bundle, costly, settings)  # type: ignore[arg-type]
    use_virtual_time(monkeypatch, engine, clock)
    return engine, clock


async def _timed_live_run(
    session: StreamingSession,
    audio: np.ndarray,
    clock: Callable[[], float],
    stall: tuple[float, float] | None = None,
) -> tuple[list[OutputFrame], list[float]]:
    """Frames of a live session fed on ``clock``'s schedule, and the clock time each came out."""
    frames: list[OutputFrame] = []
    times: list[float] = []
    async for frame in _paced_frames(session, audio, clock=clock, stall=stall):
        frames.append(frame)
        times.append(clock())
    await session.close()
    return frames, times


def _assert_paced(session: StreamingSession, frames: list[OutputFrame], times: list[float]) -> None:
    """Every output frame left at its own due time: compute never held the output back."""
    lateness = [t - session.due_time(f.index) for f, t in zip(frames, times, strict=True)]
    assert max(np.abs(lateness)) < 1e-6, max(lateness)


def test_a_slow_renderer_skips_frames_but_never_falls_behind(
    bundle: AvatarBundle, backends: dict[int, Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Virtual time: the renderer takes 2 x C x 40 ms a chunk (half real-time speed)."""
    engine, clock = _virtual_engine(bundle, backends[2], 2 * 2 * 40.0, monkeypatch)
    audio = speech_bursts([0.5 + 1.5 * i for i in range(6)], 9.0, seed=5)
    session = StreamingSession(engine, paced=True, clock=clock)
    frames, times = run_virtual(_timed_live_run(session, audio, clock), clock)
    stats = session.stats.snapshot()
    expected = int(np.ceil(len(audio) / SAMPLES_PER_FRAME)) + engine.delay_frames
    assert [f.index for f in frames] == list(range(expected))
    _assert_paced(session, frames, times)
    assert stats["chunks_skipped"] > 0 and stats["frames_skipped"] > 0
    assert 0.35 * expected < stats["frames_rendered"] < 0.65 * expected, stats  # about half
    # The shown image lags its slot by at most about one chunk's compute plus the chunk itself.
    assert stats["max_lag_ms"] <= 2 * 2 * 40 + 2 * 40, stats
    assert frames[-1].source is not None and frames[-1].source.image is not None
    out = np.concatenate([f.audio for f in frames])
    shift = engine.delay_frames * SAMPLES_PER_FRAME - _lead_samples(engine)
    assert stats["silence_filled_ms"] == 0 and stats["audio_dropped_ms"] == 0, stats
    np.testing.assert_array_equal(out[shift : shift + len(audio)], audio)  # gap-free


def test_late_input_becomes_silence_and_the_late_samples_are_dropped(
    bundle: AvatarBundle, backends: dict[int, Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Virtual time: the sender stalls for 500 ms, then sends what it held back at once."""
    engine, clock = _virtual_engine(bundle, backends[2], 20.0, monkeypatch)
    audio = speech_bursts([0.3, 1.8], 4.0, burst_s=1.0, seed=8)  # speech throughout the stall
    session = StreamingSession(engine, paced=True, clock=clock)
    frames, times = run_virtual(_timed_live_run(session, audio, clock, stall=(2.0, 2.5)), clock)
    stats = session.stats.snapshot()
    expected = int(np.ceil(len(audio) / SAMPLES_PER_FRAME)) + engine.delay_frames
    assert [f.index for f in frames] == list(range(expected)), "the timeline does not stretch"
    _assert_paced(session, frames, times)
    # What is later than the jitter allowance is filled in, to within a frame; as much is dropped.
    filled = stats["silence_filled_ms"]
    assert abs(filled - (500 - engine.settings.input_jitter_ms)) <= 40, stats
    assert stats["audio_dropped_ms"] == pytest.approx(filled), stats
    out = np.concatenate([f.audio for f in frames])
    shift = engine.delay_frames * SAMPLES_PER_FRAME - _lead_samples(engine)
    played = out[shift : shift + len(audio)]
    differs = np.flatnonzero(played != audio)
    assert len(differs) > 0 and not played[differs].any(), "only silence replaces the input"
    first, last = differs[0] / SR, differs[-1] / SR
    assert first >= 2.0 and last < 2.5 and last - first <= filled / 1000, (first, last)
    assert (last - first) * 1000 >= filled - 20, (first, last)  # one gap, not scattered drop-outs


def test_input_far_ahead_of_the_clock_is_dropped(
    bundle: AvatarBundle, backends: dict[int, Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Virtual time: a sender that pushes a 5 s file at once keeps only ``max_input_ahead_ms``."""
    engine, clock = _virtual_engine(bundle, backends[2], 20.0, monkeypatch)
    audio = speech_bursts([0.2, 3.0], 5.0, seed=9)
    ahead_ms = engine.settings.max_input_ahead_ms

    async def main() -> list[OutputFrame]:
        session = StreamingSession(engine, paced=True, clock=clock)
        await session.start()
        await session.push_audio(audio, SR)
        session.end_input()
        frames = [frame async for frame in session.frames()]
        assert session.stats.audio_dropped_ms == pytest.approx(5000 - ahead_ms, abs=1.0)
        await session.close()
        return frames

    frames = run_virtual(main(), clock)
    kept = round(ahead_ms * SR / 1000)
    assert len(frames) == int(np.ceil(kept / SAMPLES_PER_FRAME)) + engine.delay_frames
    out = np.concatenate([f.audio for f in frames])
    shift = engine.delay_frames * SAMPLES_PER_FRAME - _lead_samples(engine)
    np.testing.assert_array_equal(out[shift : shift + kept], audio[:kept])


class SlowBackend:
    """A real backend whose renderer is slowed to half real-time speed (2 x C x 40 ms a chunk)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = f"slow-{inner.name}"
        self.shape = inner.shape

    def run(self, chunk: ChunkInput) -> ChunkOutput:
        started = time.perf_counter()
        result = self.inner.run(chunk)
        time.sleep(max(0.0, 2 * self.shape.chunk_frames * 0.040 - (time.perf_counter() - started)))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.realtime
def test_a_slow_backend_keeps_pace_on_the_wall_clock(tiny_avatar: Path) -> None:
    """The same on a real worker thread and the real clock, with bounds a loaded 2-core machine
    holds: the session ends on time and the audio goes out whole except what it reports filled."""
    bundle = AvatarBundle.load(tiny_avatar)
    backend = load_backend(bundle, "onnxruntime-cpu", StreamShape.for_config(bundle.config, 2))
    engine = AvatarEngine(bundle, SlowBackend(backend), SETTINGS)  # type: ignore[arg-type]
    seconds = 6.0
    audio = speech_bursts([0.5, 2.0, 3.5, 5.0], seconds, seed=5)

    async def main() -> tuple[list[OutputFrame], dict[str, Any]]:
        session = StreamingSession(engine, paced=True)
        frames = await _run_live(session, audio)
        await session.close()
        return frames, session.stats.snapshot()

    started = time.monotonic()
    frames, stats = asyncio.run(main())
    elapsed = time.monotonic() - started
    engine.close()
    expected = int(np.ceil(len(audio) / SAMPLES_PER_FRAME)) + engine.delay_frames
    assert [f.index for f in frames] == list(range(expected))
    assert elapsed < seconds + engine.latency_ms / 1000 + 3.0, "paced in real time, no accumulated delay"
    assert stats["chunks_skipped"] > 0 and stats["frames_skipped"] > 0
    assert stats["frames_rendered"] > 0.2 * expected
    assert stats["max_lag_ms"] <= 1000, stats
    out = np.concatenate([f.audio for f in frames])
    shift = engine.delay_frames * SAMPLES_PER_FRAME - _lead_samples(engine)
    # An event-loop stall longer than the jitter allowance fills silence; it is counted.
    differs = int((out[shift : shift + len(audio)] != audio).sum())
    assert differs <= stats["silence_filled_ms"] * SR / 1000 + 1, (differs, stats)
    assert stats["silence_filled_ms"] <= 0.1 * seconds * 1000, stats


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_eight_sessions_share_one_model_without_cross_talk(
    bundle: AvatarBundle, backends: dict[int, Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Virtual time: 8 live sessions on one worker whose renderer takes 20 ms a 4-frame chunk (a
    `tiny` avatar on one core), so together they need all of it and many chunks land late."""
    engine, clock = _virtual_engine(bundle, backends[4], 20.0, monkeypatch, StreamSettings(chunk_frames=4))
    seconds = 8.0
    # Session i speaks in slots i, i+1 and i+3 of 8 (mod 8): any two sessions share at most one burst.
    slots = 0.2 + 0.95 * np.arange(8)
    audios = [
        speech_bursts(
            sorted(slots[[(i + k) % 8 for k in (0, 1, 3)]].tolist()), seconds, burst_s=0.8, seed=10 + i
        )
        for i in range(8)
    ]

    async def one(audio: np.ndarray) -> tuple[list[int], dict[int, float]]:
        """Run a live session; keep only what the checks need, as a client would not hoard frames."""
        session = StreamingSession(engine, paced=True, clock=clock)
        indices: list[int] = []
        shown: dict[int, float] = {}
        try:
            async for frame in _paced_frames(session, audio, clock=clock):
                assert abs(clock() - session.due_time(frame.index)) < 1e-6, "on time"
                indices.append(frame.index)
                if frame.source is not None and frame.source.index >= 0:
                    shown[frame.source.index] = frame.source.voice
        finally:
            await session.close()
        return indices, shown

    async def main() -> list[tuple[list[int], dict[int, float]]]:
        await one(audios[0][: SR // 2])  # warm caches before measuring memory
        return list(await asyncio.gather(*(one(audio) for audio in audios)))

    gc.collect()
    before = _rss_mb()
    results = run_virtual(main(), clock)
    gc.collect()
    after = _rss_mb()
    expected = int(np.ceil(seconds * SR / SAMPLES_PER_FRAME)) + engine.delay_frames
    envelopes = [np.sqrt((a[: len(a) // 640 * 640].reshape(-1, 640) ** 2).mean(1)) for a in audios]
    for own, (indices, shown) in enumerate(results):
        assert indices == list(range(expected)), "every session ran to its end"
        # each image shown: its mouth geometry against every session's audio at the image's own time
        times = np.array(sorted(shown))
        times = times[times < len(envelopes[own])]
        assert len(times) > 0.15 * len(envelopes[own]), len(times)
        voice = np.array([shown[t] for t in times])
        correlations = [np.corrcoef(voice, envelope[times])[0, 1] for envelope in envelopes]
        assert correlations[own] > 0.6, correlations
        assert correlations[own] > max(c for i, c in enumerate(correlations) if i != own) + 0.3, correlations
    assert after - before < max(30.0, 0.1 * before), (before, after)


def test_bad_audio_is_refused_and_the_session_goes_on(engine: AvatarEngine) -> None:
    async def main() -> list[OutputFrame]:
        session = StreamingSession(engine, paced=False)
        bad_inputs: list[tuple[np.ndarray, int]] = [
            (np.array([np.nan, 0.0], np.float32), SR),
            (np.zeros((10, 12)), SR),
            (np.zeros(10), 3),
        ]
        for bad, rate in bad_inputs:
            with pytest.raises(InputError):
                await session.push_audio(bad, rate)
        await session.push_audio(
            (np.random.default_rng(0).standard_normal((4410, 2)) * 3000).astype(np.int16), 44_100
        )
        session.end_input()
        with pytest.raises(InputError, match="ended"):
            await session.push_audio(np.zeros(10, np.float32), SR)
        frames = [f async for f in session.frames()]
        await session.close()
        return frames

    frames = asyncio.run(main())
    assert len(frames) == 3 + engine.delay_frames  # 0.1 s of audio = 2.5 -> 3 frames


def test_render_causal_uses_the_streaming_path(tiny_avatar: Path, tmp_path: Path) -> None:
    from engines.media.decode import iter_video_frames, probe_media
    from engines.media.encode import write_wav
    from stableface.cli import main

    wav = tmp_path / "speech.wav"
    write_wav(wav, speech_bursts([0.2], 1.5, seed=7))
    out = tmp_path / "causal.mp4"
    assert (
        main(
            [
                "render",
                str(tiny_avatar),
                str(wav),
                "--out",
                str(out),
                "--causal",
                "--backend",
                "torch-cpu",
                "-q",
            ]
        )
        == 0
    )
    info = probe_media(out)
    assert info.has_audio and len(list(iter_video_frames(out))) == 38
