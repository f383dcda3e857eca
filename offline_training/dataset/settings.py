"""Validated options of ``stableface prepare``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class PrepareSettings(BaseModel):
    """Validated options of ``stableface prepare``.

    ``pose_steadying`` is the Gaussian's sigma, in 25 fps frames, that takes the tracker's noise out of
    the head pose (:mod:`offline_training.dataset.steady_pose`); 0 keeps the per-frame fit.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    video: Path
    out: Path
    audio: Path | None = None
    render_size: int = Field(256, ge=32, le=2048)
    tracker: str = "mediapipe"
    tracker_model: Path | None = None
    overwrite: bool = False
    mouth_dims: int = Field(32, ge=1, le=256)
    upper_dims: int = Field(16, ge=1, le=256)
    crop_margin: float = Field(0.4, ge=0.0, le=2.0)
    pose_steadying: float = Field(0.5, ge=0.0, le=5.0)
    min_face_fraction: float = Field(0.9, gt=0.0, le=1.0)
    max_av_mismatch_s: float = Field(0.25, ge=0.0)
    min_duration_s: float = Field(2.0, gt=0.0)
    show_progress: bool = True
