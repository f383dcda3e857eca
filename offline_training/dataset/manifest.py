"""``manifest.json``: the versioned description of an avatar dataset folder.

Layout of a dataset folder (schema 1)::

    manifest.json            this file
    frames/000000.png        RGB crops at render_size, one per kept frame
    shapes/000000.png        face-shape images (RGBA: canonical code xyz, inner-mouth mask)
    masks/000000.png         mouth masks for erosion (L, 255 inside)
    full/000000.jpg          the full source frames (JPEG q92), for pasting renders back
    arrays.safetensors       per-frame arrays (see DatasetArrays in reader.py)
    face_model.safetensors   the per-avatar face model
    audio.wav                16 kHz mono speech, trimmed to the video

File names count kept frames (0..num_frames-1); ``source_frame_index`` in the arrays maps them
back to frames of the 25 fps source, where the dropped ones (no face) are missing.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceInfo(_Strict):
    video_name: str
    video_sha256: str
    video_fps: float
    video_width: int
    video_height: int
    audio_name: str
    audio_sha256: str


class TrimInfo(_Strict):
    """How the audio and video lengths were reconciled (both trimmed to the shorter)."""

    video_duration_s: float
    audio_duration_s: float
    used_duration_s: float


class TrackerInfo(_Strict):
    name: str
    layout: str
    num_points: int


class FaceModelInfo(_Strict):
    mouth_dims: int
    upper_dims: int
    explained_variance: float
    planar: bool


class AudioFeatureInfo(_Strict):
    kind: str
    n_mels: int
    win_ms: float
    hop_ms: float
    frames_per_video_frame: int
    normalisation: str
    mean: list[float]
    std: list[float]


class DatasetManifest(_Strict):
    """Everything a reader needs to know about a dataset folder, validated on load.

    ``pose_steadying_frames``: sigma (frames) of the filter over the stored head pose, 0 for none
    (datasets written before the filter existed read as 0).
    """

    schema_version: int
    created_with: str
    created_utc: str
    fps: float
    sample_rate_hz: int
    render_size: int
    crop_box: dict[str, float]
    num_source_frames: int
    num_frames: int
    dropped_frames: list[int]
    source: SourceInfo
    trim: TrimInfo
    tracker: TrackerInfo
    face_model: FaceModelInfo
    audio_features: AudioFeatureInfo
    pose_steadying_frames: float = 0.0
