"""The synthetic talking-face generator: deterministic, mouth follows the audio, readable files."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from engines.geometry.trackers import create_tracker
from engines.media.decode import iter_video_frames, load_audio, probe_media
from offline_training.synthetic import generate_talking_face, write_talking_face
from offline_training.synthetic.speech import synthesize_speech


@pytest.fixture(scope="module")
def clip():
    return generate_talking_face(seed=11, duration_s=4.0, size=192)


def test_same_seed_same_clip_other_seed_other_clip(clip) -> None:
    again = generate_talking_face(seed=11, duration_s=4.0, size=192)
    np.testing.assert_array_equal(again.frames, clip.frames)
    np.testing.assert_array_equal(again.audio, clip.audio)
    other = generate_talking_face(seed=12, duration_s=4.0, size=192)
    assert not np.array_equal(other.audio, clip.audio)
    assert not np.array_equal(other.drawn_opening, clip.drawn_opening)


def test_shapes_and_lengths_agree(clip) -> None:
    assert clip.frames.shape == (100, 192, 192, 3) and clip.frames.dtype == np.uint8
    assert clip.audio.shape == (64_000,) and clip.audio.dtype == np.float32
    assert clip.drawn_opening.shape == (100,)
    assert clip.drawn_opening.min() >= 0.0 and clip.drawn_opening.max() <= 1.0
    assert np.abs(clip.audio).max() <= 1.0


def test_drawn_opening_follows_the_loudness_and_closes_in_pauses(clip) -> None:
    rms = np.sqrt((clip.audio.reshape(100, 640) ** 2).mean(1))
    assert np.corrcoef(rms, clip.drawn_opening)[0, 1] > 0.7
    silent = rms < 1e-4
    assert silent.sum() >= 5  # phrases are separated by pauses
    assert clip.drawn_opening[silent].max() < 0.05
    assert clip.drawn_opening.max() > 0.4


def test_speech_has_voice_pitch_and_formants() -> None:
    speech = synthesize_speech(seed=3, duration_s=3.0)
    voiced = speech.audio[speech.opening > 0.5]
    spectrum = np.abs(np.fft.rfft(voiced[:8000] * np.hanning(min(8000, len(voiced)))))
    freqs = np.fft.rfftfreq(min(8000, len(voiced)), 1 / 16_000)
    peak = freqs[spectrum.argmax()]
    assert 80 < peak < 1200  # energy sits in the pitch harmonics and first formant, not in noise


def test_mediapipe_tracks_every_frame_and_the_lips_follow_the_target(clip) -> None:
    tracker = create_tracker("mediapipe")
    gaps = []
    for frame in clip.frames:
        points = tracker.track(frame)
        assert points is not None
        eyes = np.linalg.norm(points[[33, 133], :2].mean(0) - points[[362, 263], :2].mean(0))
        gaps.append(np.linalg.norm(points[13, :2] - points[14, :2]) / eyes)
    tracker.close()
    assert np.corrcoef(gaps, clip.drawn_opening)[0, 1] > 0.8


def test_written_files_read_back(tmp_path: Path, clip) -> None:
    video = tmp_path / "talk.mp4"
    write_talking_face(video, clip)
    info = probe_media(video)
    assert info.has_audio and (info.width, info.height) == (192, 192)
    frames = list(iter_video_frames(video))
    assert len(frames) == 100
    assert np.abs(frames[50].astype(float) - clip.frames[50].astype(float)).mean() < 4
    audio = load_audio(video)
    assert abs(len(audio) - len(clip.audio)) < 2048

    silent, wav = tmp_path / "silent.mp4", tmp_path / "talk.wav"
    write_talking_face(silent, clip, audio_path=wav)
    assert not probe_media(silent).has_audio
    with wave.open(str(wav)) as handle:
        assert handle.getframerate() == 16_000 and handle.getnframes() == len(clip.audio)
    np.testing.assert_allclose(load_audio(wav), clip.audio, atol=1e-4)
