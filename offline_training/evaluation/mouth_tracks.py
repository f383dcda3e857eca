"""The mouth of each frame of a video, read by a landmark tracker: how far the lips part (inner-lip
gap over mouth width) and the four sync descriptors of ``engines.av_sync``; and the resulting
weights-free audio-visual sync."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

from engines.av_sync import AvSync, audio_descriptors, av_sync, mouth_descriptors
from engines.errors import InputError
from engines.geometry.layouts import anchors_for
from engines.geometry.trackers import LandmarkTracker

FloatArray = npt.NDArray[np.float32]
ImageRGB = npt.NDArray[np.uint8]
MAX_MISSING_SHARE = 0.05
TrackT = TypeVar("TrackT", bound=npt.NDArray[np.floating[Any]])


def lip_gap_track(frames: Iterable[ImageRGB], tracker: LandmarkTracker) -> FloatArray:
    """(T,) inner-lip gap over mouth width per frame; NaN where the tracker finds no face.

    Args:
        frames: (H, W, 3) uint8 RGB frames of one video, in order.
        tracker: any landmark tracker (reset before the first frame).
    """
    return lip_gap_from_points(_tracked_points(frames, tracker), tracker.layout.name)


def mouth_descriptor_track(frames: Iterable[ImageRGB], tracker: LandmarkTracker) -> FloatArray:
    """(T, 4) sync descriptors (``engines.av_sync.MOUTH_DESCRIPTORS``) per frame; NaN rows where the
    tracker finds no face.

    Args:
        frames: (H, W, 3) uint8 RGB frames of one video, in order.
        tracker: any landmark tracker (reset before the first frame).
    """
    return mouth_descriptors(_tracked_points(frames, tracker), tracker.layout.name)


def _tracked_points(frames: Iterable[ImageRGB], tracker: LandmarkTracker) -> FloatArray:
    """(T, N, 3) landmarks of every frame (x, y and the tracker's depth); NaN where no face was found."""
    count = tracker.layout.num_points
    tracker.reset()
    points = []
    for frame in frames:
        found = tracker.track(frame)
        points.append(np.full((count, 3), np.nan, np.float32) if found is None else found[:, :3])
    return np.asarray(points, np.float32).reshape(-1, count, 3)


def lip_gap_from_points(points: npt.NDArray[np.floating[Any]], layout: str) -> FloatArray:
    """(T,) inner-lip gap over mouth width from (T, N, 2+) landmarks of ``layout``."""
    anchors = anchors_for(layout)
    gap = np.linalg.norm(
        points[:, anchors.inner_lip_top, :2] - points[:, anchors.inner_lip_bottom, :2], axis=1
    )
    left, right = anchors.mouth_corners
    width = np.linalg.norm(points[:, left, :2] - points[:, right, :2], axis=1)
    result: FloatArray = (gap / np.maximum(width, 1e-6)).astype(np.float32)
    return result


def fill_missing(track: TrackT, max_missing_share: float = MAX_MISSING_SHARE) -> TrackT:
    """``track`` (T, ...) with its NaN frames linearly interpolated from their neighbours; a frame is
    missing when any of its values is NaN.

    Raises:
        InputError: more than ``max_missing_share`` of the frames are missing (no face found).
    """
    flat = track.reshape(len(track), -1)
    missing = np.isnan(flat).any(axis=1)
    if missing.mean() > max_missing_share:
        raise InputError(f"no face found in {int(missing.sum())} of {len(track)} frames")
    if not missing.any():
        return track
    positions = np.arange(len(track))
    filled = flat.copy()
    for column in range(flat.shape[1]):
        filled[missing, column] = np.interp(positions[missing], positions[~missing], flat[~missing, column])
    return cast(TrackT, filled.reshape(track.shape))


def video_av_sync(
    frames: Iterable[ImageRGB],
    audio: FloatArray,
    sample_rate_hz: int,
    fps: float,
    tracker: LandmarkTracker,
    max_lag_ms: float = 400.0,
) -> AvSync:
    """Sync of a video's mouth with (S,) mono ``audio``: best lag (ms), score and confidence.

    Raises:
        InputError: too few frames with a face, or too short for the lag search.
    """
    mouth = fill_missing(mouth_descriptor_track(frames, tracker))
    sound = audio_descriptors(audio, sample_rate_hz, fps, len(mouth))
    return av_sync(mouth, sound, fps, max_lag_ms)
