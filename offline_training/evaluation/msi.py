"""Landmark tracks of a video under the paper's MSI normalisation (section III-D).

A fixed square box is set from the first 5 frames with a face so that the mouth (corner to corner)
is 0.25 of the box width; every frame is cropped to that box and rescaled to 256x256, and the
tracker runs on those crops. MSI is then measured on the lip and jaw points separately
(:func:`engines.stability.motion_stability_index`). The box is centred on the mean of the lip and
jaw points of those frames; parts of the box outside the frame repeat the edge pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from engines.errors import InputError
from engines.geometry.layouts import LayoutAnchors, anchors_for
from engines.geometry.trackers import LandmarkTracker
from engines.stability import motion_stability_index
from offline_training.evaluation.mouth_tracks import fill_missing

MSI_SIZE = 256
MOUTH_SHARE = 0.25
BOX_FRAMES = 5
MAX_MISSING_SHARE = 0.2

ImageRGB = npt.NDArray[np.uint8]
Points = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MsiBox:
    """A square box in source pixels: centre and side."""

    cx: float
    cy: float
    side: float

    def matrix(self, size: int = MSI_SIZE) -> npt.NDArray[np.float64]:
        """(2, 3) affine map from source pixels to the ``size`` x ``size`` crop."""
        scale = size / self.side
        x0, y0 = self.cx - self.side / 2, self.cy - self.side / 2
        return np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])

    def crop(self, frame: ImageRGB, size: int = MSI_SIZE) -> ImageRGB:
        """(size, size, 3) crop of an (H, W, 3) frame (area-averaged when shrinking, so a video
        and its 2x rescale give the same crop up to resampling noise)."""
        native = max(size, int(round(self.side)))
        warped = cv2.warpAffine(
            frame,
            self.matrix(native),
            (native, native),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        if native > size:
            warped = cv2.resize(warped, (size, size), interpolation=cv2.INTER_AREA)
        return np.asarray(warped, dtype=np.uint8)

    def to_source(self, points: Points, size: int = MSI_SIZE) -> Points:
        """(..., 2) crop coordinates back to source pixels."""
        scale = self.side / size
        offset = np.array([self.cx - self.side / 2, self.cy - self.side / 2])
        result: Points = points * scale + offset
        return result


def msi_box(landmarks: list[Points], anchors: LayoutAnchors) -> MsiBox:
    """The box of the paper's normalisation from the landmarks of the first frames.

    Args:
        landmarks: (N, 2+) source-pixel landmarks of up to 5 frames.
        anchors: the tracker's layout.
    """
    if not landmarks:
        raise InputError("no face found in the video")
    left, right = anchors.mouth_corners
    widths = [float(np.linalg.norm(points[left, :2] - points[right, :2])) for points in landmarks]
    width = float(np.mean(widths))
    if width < 2.0:
        raise InputError(f"the mouth is {width:.1f} px wide in the first frames; too small to measure")
    region = list(anchors.lips) + list(anchors.jaw)
    centre = np.mean([points[region, :2].mean(axis=0) for points in landmarks], axis=0)
    return MsiBox(float(centre[0]), float(centre[1]), width / MOUTH_SHARE)


@dataclass
class NormalisedTracks:
    """Landmarks of every frame in the 256 px box of the paper's normalisation.

    Attributes:
        points: (T, N, 2) crop coordinates; frames without a face are linearly interpolated (for
            NLMD and slices; MSI leaves the accelerations that touch them out).
        found: (T,) whether the tracker found the face in each frame.
        box: the fixed box (source pixels).
        tracker: tracker name; layout: its landmark layout.
        slice_column: (256, T, 3) uint8 pixel column through the mouth centre of each crop.
        column_x: the x of that column in the crop.
        first_crop: (256, 256, 3) the first crop.
    """

    points: Points
    found: npt.NDArray[np.bool_]
    box: MsiBox
    tracker: str
    layout: str
    slice_column: ImageRGB = field(repr=False)
    column_x: int
    first_crop: ImageRGB = field(repr=False)

    @property
    def anchors(self) -> LayoutAnchors:
        return anchors_for(self.layout)

    def msi_lip(self) -> float:
        """MSI of the lip points."""
        return motion_stability_index(self.points[:, list(self.anchors.lips)], self.found)

    def msi_jaw(self) -> float:
        """MSI of the jaw points."""
        return motion_stability_index(self.points[:, list(self.anchors.jaw)], self.found)


def track_normalised(
    frames: Iterable[ImageRGB],
    tracker: LandmarkTracker,
    progress: Callable[[int], None] | None = None,
) -> NormalisedTracks:
    """Track a video under the MSI normalisation, in one pass over the frames.

    The first frames are held until 5 of them show a face (the box needs them), then every
    frame is cropped and tracked as it arrives.

    Args:
        frames: (H, W, 3) uint8 RGB frames of one video, in order.
        tracker: any landmark tracker.
        progress: called with 1 after each frame.

    Raises:
        InputError: no face in the first frames, or more than 20% of frames without a face.
    """
    anchors = anchors_for(tracker.layout.name)
    held: list[ImageRGB] = []
    first_points: list[Points] = []
    tracker.reset()
    iterator = iter(frames)
    for frame in iterator:
        held.append(frame)
        points = _track_enlarged(tracker, frame)
        if points is not None:
            first_points.append(points)
        if len(first_points) == BOX_FRAMES:
            break
        if len(held) > 10 * BOX_FRAMES and not first_points:
            raise InputError(f"no face found in the first {len(held)} frames")
    box = msi_box(first_points, anchors)
    tracker.reset()
    tracks: list[Points | None] = []
    columns: list[ImageRGB] = []
    first_crops: list[ImageRGB] = []
    column_x = _mouth_column(first_points, anchors, box)

    def measure(frame: ImageRGB) -> None:
        crop = box.crop(frame)
        points = tracker.track(crop)
        tracks.append(None if points is None else points[:, :2].astype(np.float64))
        columns.append(crop[:, column_x])
        if not first_crops:
            first_crops.append(crop)
        if progress is not None:
            progress(1)

    for frame in held:
        measure(frame)
    for frame in iterator:
        measure(frame)
    if len(tracks) < 3:
        raise InputError(f"the video has {len(tracks)} frames; MSI needs at least 3")
    filled, found = _filled(tracks)
    return NormalisedTracks(
        points=filled,
        found=found,
        box=box,
        tracker=tracker.name,
        layout=tracker.layout.name,
        slice_column=np.stack(columns, axis=1),
        column_x=column_x,
        first_crop=first_crops[0],
    )


def _track_enlarged(tracker: LandmarkTracker, frame: ImageRGB) -> Points | None:
    """(N, 2) source-pixel landmarks; frames smaller than the 256 px box are enlarged first, since
    face detectors miss small faces (the box crops are 256 px anyway)."""
    factor = MSI_SIZE / max(frame.shape[:2])
    if factor > 1:
        size = (round(frame.shape[1] * factor), round(frame.shape[0] * factor))
        frame = np.asarray(cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC), dtype=np.uint8)
    points = tracker.track(frame)
    if points is None:
        return None
    result: Points = points[:, :2].astype(np.float64) / max(factor, 1.0)
    return result


def _mouth_column(first_points: list[Points], anchors: LayoutAnchors, box: MsiBox) -> int:
    """x (crop pixels) of the mouth centre in the first frames."""
    left, right = anchors.mouth_corners
    centre = np.mean([(points[left] + points[right]) / 2 for points in first_points], axis=0)
    crop_x = (box.matrix() @ np.array([centre[0], centre[1], 1.0]))[0]
    return int(np.clip(round(float(crop_x)), 0, MSI_SIZE - 1))


def _filled(tracks: list[Points | None]) -> tuple[Points, npt.NDArray[np.bool_]]:
    """(T, N, C) tracks with missing frames interpolated, and the (T,) found mask."""
    found = np.array([points is not None for points in tracks])
    if not found.any():
        raise InputError("no face found in the video")
    shape = next(points for points in tracks if points is not None).shape
    stacked = np.stack([points if points is not None else np.full(shape, np.nan) for points in tracks])
    return fill_missing(stacked, MAX_MISSING_SHARE), found
