"""The weights-free audio-visual sync measure, the mouth tracks it reads, and the AI mark."""

from __future__ import annotations

import numpy as np
import pytest

from engines.ai_mark import apply_ai_mark
from engines.av_sync import av_sync, speech_envelope_db
from engines.errors import InputError

RATE = 16_000


def _bursts(seconds: float, seed: int) -> np.ndarray:
    """1 kHz tone bursts of random lengths and gaps (a speech-band signal with sharp edges)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    gate = np.zeros_like(t)
    position = 0.0
    while position < seconds:
        length, gap = rng.uniform(0.1, 0.4), rng.uniform(0.1, 0.5)
        gate[(t >= position) & (t < position + length)] = rng.uniform(0.3, 1.0)
        position += length + gap
    return (gate * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)


@pytest.mark.parametrize("delay_frames", [-3, 0, 2, 5])
def test_a_mouth_that_follows_the_envelope_late_is_found_at_that_lag(delay_frames: int) -> None:
    audio = _bursts(12.0, seed=delay_frames + 10)
    envelope = speech_envelope_db(audio, RATE, 25.0)
    mouth = np.roll(envelope, delay_frames)
    result = av_sync(mouth, envelope, 25.0)
    assert result.offset_ms == pytest.approx(40.0 * delay_frames, abs=1.0)
    assert result.correlation > 0.95
    assert result.correlation_at_zero < result.correlation or delay_frames == 0


def test_an_unrelated_mouth_does_not_correlate() -> None:
    envelope = speech_envelope_db(_bursts(12.0, seed=1), RATE, 25.0)
    other = speech_envelope_db(_bursts(12.0, seed=2), RATE, 25.0)
    assert av_sync(other, envelope, 25.0).correlation < 0.35


def test_the_envelope_is_the_speech_band_per_frame() -> None:
    t = np.arange(RATE) / RATE
    hum = np.sin(2 * np.pi * 60 * t).astype(np.float32)
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    assert speech_envelope_db(hum, RATE, 25.0).max() < -100  # below the band: not speech
    envelope = speech_envelope_db(tone, RATE, 25.0)
    assert envelope.shape == (25,) and np.allclose(envelope[2:-2], 10 * np.log10(0.5), atol=0.1)
    assert speech_envelope_db(tone[:100], RATE, 25.0, frames=3).shape == (3,)


def test_bad_tracks_are_refused_in_one_line() -> None:
    with pytest.raises(InputError, match="alike"):
        av_sync(np.zeros(50, np.float32), np.zeros(40, np.float32), 25.0)
    with pytest.raises(InputError, match="too few"):
        av_sync(np.zeros(20, np.float32), np.zeros(20, np.float32), 25.0)


def test_mediapipe_reads_the_synthetic_face_opening_its_mouth() -> None:
    """The pixel measure the default-avatar tests rely on tracks the generator's known opening."""
    from engines.geometry.trackers import create_tracker
    from offline_training.evaluation.mouth_tracks import fill_missing, lip_gap_track, video_av_sync
    from offline_training.synthetic import generate_talking_face

    clip = generate_talking_face(seed=5, duration_s=6.0, size=256)
    tracker = create_tracker("mediapipe")
    opening = fill_missing(lip_gap_track(list(clip.frames), tracker))
    assert np.corrcoef(opening, clip.drawn_opening)[0, 1] > 0.9
    sync = video_av_sync(list(clip.frames), clip.audio, clip.sample_rate_hz, clip.fps, tracker)
    assert sync.correlation > 0.5 and abs(sync.offset_ms) <= 40


def test_missing_faces_are_filled_only_when_few() -> None:
    from offline_training.evaluation.mouth_tracks import fill_missing

    track = np.linspace(0, 1, 100).astype(np.float32)
    track[[10, 11, 50]] = np.nan
    np.testing.assert_allclose(fill_missing(track), np.linspace(0, 1, 100), atol=1e-6)
    track[:20] = np.nan
    with pytest.raises(InputError, match="no face found in 21 of 100 frames"):
        fill_missing(track)


def test_the_ai_mark_sits_in_the_bottom_right_corner_and_skips_tiny_frames() -> None:
    frame = np.full((256, 256, 3), 200, np.uint8)
    marked = apply_ai_mark(frame.copy())
    rows, cols = np.nonzero(np.abs(marked.astype(int) - frame).max(axis=2) > 8)
    assert len(rows) > 300 and rows.min() > 256 * 0.85 and cols.min() > 256 * 0.45
    assert marked[rows, cols].mean() < 150  # a dark label, white text
    tiny = np.full((64, 64, 3), 200, np.uint8)
    assert np.array_equal(apply_ai_mark(tiny.copy()), tiny)
