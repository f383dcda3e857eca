"""How far the lips part in each frame of a video (inner-lip gap over mouth width, from a landmark
tracker), and the resulting weights-free audio-visual sync (``engines.av_sync``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

from engines.av_sync import AvSync, av_sync, speech_envelope_db
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
    layout = tracker.layout.name
    tracker.reset()
    gaps = []
    for frame in frames:
        points = tracker.track(frame)
        gaps.append(np.nan if points is None else float(lip_gap_from_points(points[None], layout)[0]))
    return np.asarray(gaps, np.float32)


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
    """Sync of a video's mouth with (S,) mono ``audio``: best lag (ms) and correlation.

    Raises:
        InputError: too few frames with a face, or too short for the lag search.
    """
    gap = fill_missing(lip_gap_track(frames, tracker))
    envelope = speech_envelope_db(audio, sample_rate_hz, fps, frames=len(gap))
    return av_sync(gap, envelope, fps, max_lag_ms)
