"""The head-pose filter of `prepare`: removes frame-to-frame noise, keeps motion, never mixes runs."""

from __future__ import annotations

import numpy as np
import pytest

from engines.geometry.pose import HeadPose
from offline_training.dataset.steady_pose import consecutive_runs, steady_poses

FRAMES = 250


def _rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    x, y, z = axis / np.linalg.norm(axis)
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    rotation: np.ndarray = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    return rotation


def _noisy_head(rng: np.random.Generator) -> tuple[HeadPose, HeadPose]:
    """A head nodding at 0.5 Hz (25 fps) and the same head as a tracker with 1 px noise sees it."""
    time = np.arange(FRAMES) / 25.0
    translation = np.stack([60 + 8 * np.sin(np.pi * time), 70 + 4 * np.cos(np.pi * time), 0 * time], 1)
    scale = 1.0 + 0.05 * np.sin(0.5 * np.pi * time)
    angles = 0.1 * np.sin(np.pi * time)
    rotation = np.stack([_rotation_about(np.array([1.0, 0.2, 0.0]), a) for a in angles])
    clean = HeadPose(scale.astype(np.float32), rotation.astype(np.float32), translation.astype(np.float32))
    noisy_rotation = np.stack(
        [r @ _rotation_about(rng.normal(size=3), rng.normal(0, 0.01)) for r in rotation]
    )
    noisy = HeadPose(
        (scale + rng.normal(0, 0.01, FRAMES)).astype(np.float32),
        noisy_rotation.astype(np.float32),
        (translation + rng.normal(0, 1.0, translation.shape)).astype(np.float32),
    )
    return clean, noisy


def test_noise_goes_and_the_motion_stays() -> None:
    clean, noisy = _noisy_head(np.random.default_rng(0))
    steady = steady_poses(noisy, np.arange(FRAMES), sigma=1.0)

    def error(pose: HeadPose) -> float:
        return float(np.abs(pose.translation - clean.translation).mean())

    def jitter(pose: HeadPose) -> float:
        return float(np.diff(pose.translation, 2, axis=0).std())

    assert error(steady) < 0.6 * error(noisy)
    assert jitter(steady) < 0.3 * jitter(noisy)
    assert np.abs(steady.scale - clean.scale).mean() < 0.6 * np.abs(noisy.scale - clean.scale).mean()
    rotation_error = np.linalg.norm(steady.rotation - clean.rotation, axis=(1, 2)).mean()
    assert rotation_error < 0.7 * np.linalg.norm(noisy.rotation - clean.rotation, axis=(1, 2)).mean()


def test_rotations_stay_rotations() -> None:
    _, noisy = _noisy_head(np.random.default_rng(1))
    rotation = steady_poses(noisy, np.arange(FRAMES), sigma=2.0).rotation.astype(np.float64)
    identity = np.broadcast_to(np.eye(3), rotation.shape)
    assert np.allclose(rotation @ rotation.transpose(0, 2, 1), identity, atol=1e-5)
    assert np.allclose(np.linalg.det(rotation), 1.0, atol=1e-5)


def test_a_gap_in_the_frames_starts_a_new_run() -> None:
    frames = np.r_[np.arange(0, 10), np.arange(12, 22)]
    assert consecutive_runs(frames) == [slice(0, 10), slice(10, 20)]
    translation = np.zeros((20, 3), dtype=np.float32)
    translation[10:] = 100.0
    pose = HeadPose(np.ones(20, np.float32), np.tile(np.eye(3, dtype=np.float32), (20, 1, 1)), translation)
    steady = steady_poses(pose, frames, sigma=3.0)
    assert np.array_equal(steady.translation, translation)


def test_sigma_zero_keeps_the_fit_and_bad_arguments_are_refused() -> None:
    _, noisy = _noisy_head(np.random.default_rng(2))
    assert steady_poses(noisy, np.arange(FRAMES), sigma=0.0) is noisy
    with pytest.raises(ValueError, match="frame numbers"):
        steady_poses(noisy, np.arange(FRAMES - 1), sigma=1.0)
    with pytest.raises(ValueError, match="sigma"):
        steady_poses(noisy, np.arange(FRAMES), sigma=-1.0)
    assert consecutive_runs(np.array([], dtype=np.int64)) == []
