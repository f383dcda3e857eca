"""The MSI ratio's bootstrap interval: covers the true ratio, narrows with length, is repeatable."""

from __future__ import annotations

import numpy as np
import pytest

from engines.stability import motion_stability_index
from offline_training.evaluation.msi_interval import msi_ratio_interval


def _noisy_tracks(frames: int, noise: float, seed: int) -> np.ndarray:
    """(T, 6, 2) tracks: one shared slow motion plus white noise of std ``noise``."""
    time = np.arange(frames)[:, None, None]
    motion = 3.0 * np.sin(2 * np.pi * time / 50.0) * np.ones((1, 6, 2))
    tracks: np.ndarray = motion + np.random.default_rng(seed).normal(0.0, noise, size=(frames, 6, 2))
    return tracks


def test_a_video_against_itself_is_exactly_one() -> None:
    tracks = _noisy_tracks(150, 1.0, seed=1)
    interval = msi_ratio_interval(tracks, tracks)
    assert interval.low == pytest.approx(1.0) and interval.high == pytest.approx(1.0)


def test_the_interval_covers_the_true_ratio_and_narrows_with_length() -> None:
    # White noise of std s has acceleration variance 6 s^2, so the true ratio is (1.0 / 0.8)^2.
    truth = (1.0 / 0.8) ** 2
    widths = []
    for frames in (150, 600, 2400):
        ours, real = _noisy_tracks(frames, 0.8, seed=2), _noisy_tracks(frames, 1.0, seed=3)
        interval = msi_ratio_interval(ours, real)
        point = motion_stability_index(ours) / motion_stability_index(real)
        assert interval.contains(point)
        assert interval.contains(truth), (frames, interval)
        widths.append(interval.high - interval.low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.15 < widths[0]


def test_it_is_repeatable_and_the_seed_is_the_only_chance() -> None:
    ours, real = _noisy_tracks(200, 0.9, seed=4), _noisy_tracks(200, 1.0, seed=5)
    assert msi_ratio_interval(ours, real) == msi_ratio_interval(ours, real)
    assert msi_ratio_interval(ours, real, seed=1) != msi_ratio_interval(ours, real, seed=2)


def test_frames_missing_in_either_video_are_left_out_of_both() -> None:
    ours, real = _noisy_tracks(300, 0.8, seed=6), _noisy_tracks(300, 1.0, seed=7)
    found = np.ones(300, dtype=bool)
    found[100:110] = False
    wild = ours.copy()
    wild[100:110] += 500.0  # what a tracker's miss might leave behind
    without_the_gap = msi_ratio_interval(ours, real, real_found=found)
    assert msi_ratio_interval(wild, real, ours_found=found) == without_the_gap


def test_bad_arguments_are_refused() -> None:
    tracks = _noisy_tracks(50, 1.0, seed=8)
    with pytest.raises(ValueError, match="one shape"):
        msi_ratio_interval(tracks, tracks[:40])
    with pytest.raises(ValueError, match="level"):
        msi_ratio_interval(tracks, tracks, level=1.5)
    with pytest.raises(ValueError, match="at least 4"):
        msi_ratio_interval(tracks[:3], tracks[:3])


def test_the_tail_report_says_in_one_line_when_too_few_frames_are_measured_in_both() -> None:
    from engines.errors import InputError
    from offline_training.evaluation.msi import MsiBox, NormalisedTracks
    from offline_training.evaluation.tail_stability import _ratio_interval

    def tracks(found: np.ndarray) -> NormalisedTracks:
        return NormalisedTracks(
            points=np.random.default_rng(9).normal(size=(10, 478, 2)),
            found=found,
            box=MsiBox(0.0, 0.0, 1.0),
            tracker="mediapipe",
            layout="mediapipe478",
            slice_column=np.zeros((256, 10, 3), dtype=np.uint8),
            column_x=0,
            first_crop=np.zeros((256, 256, 3), dtype=np.uint8),
        )

    ours_found, real_found = np.ones(10, dtype=bool), np.ones(10, dtype=bool)
    ours_found[[1, 4]] = False
    real_found[[7]] = False  # few misses each, but together they leave 1 acceleration
    with pytest.raises(InputError, match="lips MSI ratio has no interval"):
        _ratio_interval(tracks(ours_found), tracks(real_found), "lips")
