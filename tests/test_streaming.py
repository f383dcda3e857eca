"""The streaming core: same frames whatever the push sizes, A/V sync, never falling behind, idle,
many sessions on one model."""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.backends import StreamShape, load_backend
from engines.backends.base import Backend, ChunkInput, ChunkOutput
from engines.bundle import AvatarBundle
from engines.errors import InputError
from realtime.engine import AvatarEngine
from realtime.offline import stream_file
from realtime.session import OutputFrame, StreamingSession
from realtime.settings import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME, StreamSettings, output_delay_frames

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
def engine(tiny_avatar: Path) -> AvatarEngine:
    loaded = AvatarEngine.load(tiny_avatar, "onnxruntime", SETTINGS)
    yield loaded
    loaded.close()


async def _run_offline(engine: AvatarEngine, audio: np.ndarray, seed: int = 0) -> list[OutputFrame]:
    session = StreamingSession(engine, realtime=False)
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
    session: StreamingSession, audio: np.ndarray, packet_ms: int = 20
) -> AsyncIterator[OutputFrame]:
    packet = SR * packet_ms // 1000

    async def feed() -> None:
        started = time.monotonic()
        for number, position in enumerate(range(0, len(audio), packet)):
            await asyncio.sleep(max(0.0, started + number * packet_ms / 1000 - time.monotonic()))
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
        frames = asyncio.run(_run_offline(engine, audio, seed))
        assert [f.index for f in frames] == list(range(len(reference) + delay))
        assert not any(f.skipped for f in frames)
        differences = [
            np.abs(f.image.astype(int) - reference[f.index - delay].image.astype(int)).max()
            for f in frames[delay:]
        ]
        assert max(differences) <= 2, max(differences)
        out = np.concatenate([f.audio for f in frames])
        shift = delay * SAMPLES_PER_FRAME - _lead_samples(engine)
        assert not out[:shift].any()
        np.testing.assert_array_equal(out[shift : shift + len(audio)], audio)  # sample-exact


def _lead_samples(engine: AvatarEngine) -> int:
    return round(engine.settings.audio_lead_ms * SR / 1000)


def _onsets(active: np.ndarray, quiet_before: int) -> list[int]:
    """Indices where ``active`` turns on after at least ``quiet_before`` inactive steps."""
    found, last_active = [], -quiet_before - 1
    for index in np.flatnonzero(active):
        if index - last_active > quiet_before:
            found.append(int(index))
        last_active = index
    return found


def test_lips_and_sound_leave_together(engine: AvatarEngine) -> None:
    onsets = [0.52, 1.84, 3.16]
    audio = speech_bursts(onsets, 4.2, seed=2)
    frames = asyncio.run(_run_offline(engine, audio))
    out_audio = np.concatenate([f.audio for f in frames])
    audio_onsets = [i / SR for i in _onsets(np.abs(out_audio) > 0.01, SR // 2)]
    assert len(audio_onsets) == 3, audio_onsets
    opening = np.array([f.source.mouth_opening for f in frames])
    voiced = np.array([f.source.voice for f in frames]) > 0.5
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
    frames = asyncio.run(_run_offline(engine, audio))
    delay = engine.delay_frames
    idle = [f for f in frames if 2.2 <= (f.index - delay) * 0.04 <= 5.9]  # speech ends at 1.2 s
    opening = np.array([f.source.mouth_opening for f in idle])
    speech = [f.source.mouth_opening for f in frames if 0.3 <= (f.index - delay) * 0.04 <= 1.1]
    assert opening.max() - opening.min() < 1e-6, "the mouth stays still in silence"
    assert opening.max() < np.median(speech)
    assert opening.max() <= engine.frames.mouth_opening(engine.frames.rest_mouth) + 1e-6
    assert len({f.source.reference_index for f in idle}) > 50, "the reference video plays on"

    def jump(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())

    reference = engine.frames.reference
    own = max(jump(reference.full_frame(i), reference.full_frame(i + 1)) for i in range(len(reference) - 1))
    around = [f for f in frames if 1.0 <= (f.index - delay) * 0.04 <= 6.3]  # both transitions included
    worst = max(jump(a.image, b.image) for a, b in itertools.pairwise(around))
    assert worst <= own, (worst, own)


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


def test_a_slow_backend_skips_frames_but_never_falls_behind(tiny_avatar: Path) -> None:
    bundle = AvatarBundle.load(tiny_avatar)
    backend = load_backend(bundle, "onnxruntime", StreamShape.for_config(bundle.config, 2))
    engine = AvatarEngine(bundle, SlowBackend(backend), SETTINGS)  # type: ignore[arg-type]
    audio = speech_bursts([0.5 + 1.5 * i for i in range(13)], 20.0, seed=5)

    async def main() -> tuple[list[OutputFrame], dict[str, Any]]:
        session = StreamingSession(engine, realtime=True)
        frames = await _run_live(session, audio)
        await session.close()
        return frames, session.stats.snapshot()

    started = time.monotonic()
    frames, stats = asyncio.run(main())
    elapsed = time.monotonic() - started
    engine.close()
    expected = int(np.ceil(len(audio) / SAMPLES_PER_FRAME)) + engine.delay_frames
    assert [f.index for f in frames] == list(range(expected))
    assert elapsed < 20.0 + engine.latency_ms / 1000 + 1.5, "paced in real time, no accumulated delay"
    assert stats["chunks_skipped"] > 0 and stats["frames_skipped"] > 0
    assert stats["frames_rendered"] > 0.2 * expected
    assert stats["max_lag_ms"] <= 500, stats
    out = np.concatenate([f.audio for f in frames])
    shift = engine.delay_frames * SAMPLES_PER_FRAME - _lead_samples(engine)
    assert stats["silence_filled_ms"] == 0 and stats["audio_dropped_ms"] == 0, stats
    np.testing.assert_array_equal(out[shift : shift + len(audio)], audio)  # gap-free


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_eight_sessions_share_one_model_without_cross_talk(tiny_avatar: Path) -> None:
    settings = StreamSettings(chunk_frames=4)
    engine = AvatarEngine.load(tiny_avatar, "onnxruntime", settings)
    seconds = 30.0
    rng = np.random.default_rng(6)
    audios = [
        speech_bursts(sorted(rng.uniform(0.2, seconds - 1.0, 9).tolist()), seconds, burst_s=0.8, seed=10 + i)
        for i in range(8)
    ]

    async def one(audio: np.ndarray) -> tuple[list[int], dict[int, float]]:
        """Run a live session; keep only what the checks need, as a client would not hoard frames."""
        session = StreamingSession(engine, realtime=True)
        indices: list[int] = []
        shown: dict[int, float] = {}
        try:
            async for frame in _paced_frames(session, audio):
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
    results = asyncio.run(main())
    gc.collect()
    after = _rss_mb()
    engine.close()
    expected = int(np.ceil(seconds * SR / SAMPLES_PER_FRAME)) + engine.delay_frames
    envelopes = [np.sqrt((a[: len(a) // 640 * 640].reshape(-1, 640) ** 2).mean(1)) for a in audios]
    for own, (indices, shown) in enumerate(results):
        assert indices == list(range(expected)), "every session ran to its end"
        # each image shown: its mouth geometry against every session's audio at the image's own time
        times = np.array(sorted(shown))
        times = times[times < len(envelopes[own])]
        # 8 tiny sessions fill the worker thread of a 2-core machine (about 20 ms of compute per
        # 160 ms chunk each): many chunks land late and show only their newest frame.
        assert len(times) > 0.15 * len(envelopes[own]), len(times)
        voice = np.array([shown[t] for t in times])
        correlations = [np.corrcoef(voice, envelope[times])[0, 1] for envelope in envelopes]
        assert correlations[own] > 0.6, correlations
        assert correlations[own] > max(c for i, c in enumerate(correlations) if i != own) + 0.3, correlations
    assert after - before < max(30.0, 0.1 * before), (before, after)


def test_bad_audio_is_refused_and_the_session_goes_on(engine: AvatarEngine) -> None:
    async def main() -> list[OutputFrame]:
        session = StreamingSession(engine, realtime=False)
        for bad, rate in [
            (np.array([np.nan, 0.0], np.float32), SR),
            (np.zeros((10, 12)), SR),
            (np.zeros(10), 3),
        ]:
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
            ["render", str(tiny_avatar), str(wav), "--out", str(out), "--causal", "--backend", "torch", "-q"]
        )
        == 0
    )
    info = probe_media(out)
    assert info.has_audio and len(list(iter_video_frames(out))) == 38

