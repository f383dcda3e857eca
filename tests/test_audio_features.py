"""Log-mel features: shapes, alignment to video frames, streaming equivalence, normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from engines.audio.features import (
    FeatureStats,
    LogMelConfig,
    StreamingLogMel,
    log_mel,
    log_mel_for_video,
    mel_filterbank,
    normalise,
    utterance_stats,
)
from engines.errors import InputError

RATE = 16_000


def test_shapes_and_video_alignment() -> None:
    cfg = LogMelConfig()
    assert (cfg.win_samples, cfg.hop_samples, cfg.frames_per_video_frame(25.0)) == (400, 160, 4)
    assert log_mel(np.zeros(RATE, np.float32)).shape == (100, 80)
    assert log_mel(np.zeros(RATE + 1, np.float32)).shape == (101, 80)
    assert log_mel_for_video(np.zeros(RATE - 500, np.float32), 25).shape == (100, 80)
    assert log_mel_for_video(np.zeros(3 * RATE, np.float32), 25).shape == (100, 80)
    with pytest.raises(ValueError):
        cfg.frames_per_video_frame(30.0)


def test_a_tone_peaks_in_its_mel_band() -> None:
    t = np.arange(RATE) / RATE
    features = log_mel(np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    bank = mel_filterbank()
    freqs = np.fft.rfftfreq(512, 1 / RATE)
    expected = int(bank[:, np.argmin(np.abs(freqs - 1000))].argmax())
    assert abs(int(features[50].argmax()) - expected) <= 1


def test_a_click_lands_in_the_frames_whose_windows_cover_it() -> None:
    audio = np.zeros(RATE, np.float32)
    click = 640 * 10 + 300  # inside video frame 10
    audio[click] = 1.0
    energy = log_mel(audio).max(1)
    loud = set(np.flatnonzero(energy > energy.min() + 5).tolist())
    covering = {j for j in range(100) if 160 * j - 120 <= click < 160 * j + 280}
    assert loud == covering
    assert covering <= set(range(40, 44)) | {39, 44}


def test_streaming_equals_offline_for_random_push_sizes() -> None:
    rng = np.random.default_rng(0)
    audio = rng.normal(scale=0.1, size=37_123).astype(np.float32)
    offline = log_mel(audio)
    for trial in range(3):
        stream = StreamingLogMel()
        pieces, position = [], 0
        while position < len(audio):
            size = int(rng.integers(1, 4000 if trial else 20))
            pieces.append(stream.push(audio[position : position + size]))
            position += size
        pieces.append(stream.flush())
        online = np.concatenate(pieces)
        assert online.shape == offline.shape
        assert np.abs(online - offline).max() < 1e-4


def test_normalisation_and_stats_round_trip() -> None:
    rng = np.random.default_rng(1)
    features = log_mel(rng.normal(size=RATE).astype(np.float32))
    stats = utterance_stats(features)
    normal = normalise(features, stats)
    np.testing.assert_allclose(normal.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(normal.std(0), 1, atol=1e-3)
    again = FeatureStats.from_dict(stats.to_dict())
    np.testing.assert_array_equal(again.mean, stats.mean)


@pytest.mark.parametrize("bad", [np.zeros((10, 2)), np.array([0.0, np.nan]), ["a", "b"]])
def test_bad_audio_is_an_input_error(bad: object) -> None:
    with pytest.raises(InputError):
        log_mel(bad)  # type: ignore[arg-type]
