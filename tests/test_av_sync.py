"""The weights-free audio-visual sync measure, the mouth and sound descriptors it reads, and the AI
mark."""

from __future__ import annotations

import numpy as np
import pytest

from engines.ai_mark import apply_ai_mark
from engines.av_sync import AUDIO_BANDS, audio_descriptors, av_sync, mouth_descriptors
from engines.errors import InputError

RATE = 16_000


def _speech_like(seconds: float, seed: int) -> np.ndarray:
    """Bursts of tones whose pitch and loudness change from burst to burst (a changing spectrum)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    out = np.zeros_like(t)
    position = 0.0
    while position < seconds:
        length, gap = rng.uniform(0.08, 0.35), rng.uniform(0.05, 0.4)
        inside = (t >= position) & (t < position + length)
        out[inside] = rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * rng.uniform(200, 3000) * t[inside])
        position += length + gap
    return out.astype(np.float32)


def _mouth_driven_by(audio: np.ndarray, delay_frames: int, seed: int) -> np.ndarray:
    """(T, 4) mouth descriptors that are a fixed mix of the sound's bands, ``delay_frames`` late, noisy."""
    sound = audio_descriptors(audio, RATE, 25.0, len(audio) * 25 // RATE)
    rng = np.random.default_rng(seed)
    mouth = sound @ rng.normal(size=(AUDIO_BANDS, 4))
    mouth = np.roll(mouth, delay_frames, axis=0)
    return (mouth + 0.3 * mouth.std(axis=0) * rng.normal(size=mouth.shape)).astype(np.float32)


@pytest.mark.parametrize("delay_frames", [-3, 0, 2, 5])
def test_a_mouth_that_follows_the_sound_late_is_found_at_that_lag(delay_frames: int) -> None:
    audio = _speech_like(12.0, seed=delay_frames + 10)
    mouth = _mouth_driven_by(audio, delay_frames, seed=1)
    result = av_sync(mouth, audio_descriptors(audio, RATE, 25.0, len(mouth)), 25.0)
    assert result.offset_ms == pytest.approx(40.0 * delay_frames, abs=20.0)  # half a frame
    assert result.correlation > 0.8 and result.reliable and result.confidence >= 3 and result.reason == ""
    assert result.correlation_at_zero < result.correlation or delay_frames == 0


def test_an_unrelated_mouth_is_no_reliable_signal() -> None:
    audio = _speech_like(12.0, seed=1)
    mouth = _mouth_driven_by(_speech_like(12.0, seed=2), 0, seed=1)
    result = av_sync(mouth, audio_descriptors(audio, RATE, 25.0, len(mouth)), 25.0)
    assert result.correlation < 0.3 and not result.reliable
    assert result.reason.startswith("no reliable sync signal")


def test_a_lag_beyond_the_search_is_not_reported_as_a_measurement() -> None:
    audio = _speech_like(12.0, seed=3)
    mouth = _mouth_driven_by(audio, 15, seed=1)  # 600 ms late, the search reaches 400 ms
    result = av_sync(mouth, audio_descriptors(audio, RATE, 25.0, len(mouth)), 25.0)
    assert not result.reliable and "no reliable sync signal" in result.reason


def test_mouth_descriptors_are_distances_over_the_eye_distance() -> None:
    points = np.zeros((2, 68, 2), np.float32)
    points[:, 36:42] = (-30.0, 0.0)  # left eye centre
    points[:, 42:48] = (30.0, 0.0)  # right eye centre: eyes 60 apart
    points[:, 62], points[:, 66] = (0.0, 50.0), (0.0, 56.0)  # inner lips 6 apart
    points[:, 51], points[:, 57] = (0.0, 45.0), (0.0, 63.0)  # outer lips 18 apart
    points[:, 48], points[:, 54] = (-24.0, 53.0), (24.0, 53.0)  # corners 48 apart
    points[:, 33], points[:, 8] = (0.0, 30.0), (0.0, 90.0)  # under the nose to the chin: 60
    points[1] = points[1] * 3 + 7  # the same face nearer the camera, elsewhere in the frame
    points[1, 0] = np.nan
    descriptors = mouth_descriptors(points, "ibug68")
    np.testing.assert_allclose(descriptors, [[0.1, 0.3, 0.8, 1.0]] * 2, rtol=1e-6)
    assert mouth_descriptors(np.full((1, 68, 2), np.nan, np.float32), "ibug68").shape == (1, 4)
    assert np.isnan(mouth_descriptors(np.full((1, 68, 2), np.nan, np.float32), "ibug68")).all()
    with pytest.raises(InputError, match="not"):
        mouth_descriptors(np.zeros((3, 478, 2), np.float32), "ibug68")


def test_audio_descriptors_are_frame_spectra() -> None:
    t = np.arange(2 * RATE) / RATE
    audio = (np.sin(2 * np.pi * 1000 * t) * (t >= 1.0)).astype(np.float32)
    sound = audio_descriptors(audio, RATE, 25.0, 60)  # 2.4 s: the last 10 frames are past the end
    assert sound.shape == (60, AUDIO_BANDS) and sound.dtype == np.float32
    assert sound[26:50].max() > sound[:24].max() + 5  # the tone's band, in nepers
    assert np.ptp(sound[:24]) == 0 and np.ptp(sound[51:]) == 0  # silence sits on the floor
    tone_bands = np.argsort(sound[30])[-2:]
    assert np.ptp(sound[26:50, tone_bands], axis=0).max() < 0.05  # a steady tone, steady bands
    with pytest.raises(InputError, match="at least one frame"):
        audio_descriptors(audio, RATE, 25.0, 0)


def test_bad_tracks_are_refused_in_one_line() -> None:
    with pytest.raises(InputError, match="alike"):
        av_sync(np.zeros(50, np.float32), np.zeros(40, np.float32), 25.0)
    with pytest.raises(InputError, match="too few"):
        av_sync(np.zeros(20, np.float32), np.zeros(20, np.float32), 25.0)
    with pytest.raises(InputError, match="NaN"):
        av_sync(np.full((60, 4), np.nan, np.float32), np.zeros((60, 3), np.float32), 25.0)


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
    assert sync.correlation > 0.5 and abs(sync.offset_ms) <= 40 and sync.reliable


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
