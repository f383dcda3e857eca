"""Validated options of ``stableface train``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Stage = Literal["a2e", "renderer", "joint"]
StageChoice = Literal["a2e", "renderer", "joint", "all"]


class TrainSettings(BaseModel):
    """What to train, for how long, and where the avatar goes.

    ``steps`` (or ``epochs``) counts per stage; with ``stage="all"`` the stages run in order
    a2e → renderer → joint, the joint stage getting a fifth of the renderer's steps (the paper's
    100 + 20 epochs). ``budget_s`` instead gives the whole run a wall-clock budget
    (:mod:`offline_training.train.budget`). ``batch_size`` ``None`` picks one for the device
    (:func:`resolved_batch_size`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: Path
    out: Path
    preset: str = "small"
    stage: StageChoice = "all"
    steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    resume: bool = False
    overwrite: bool = False
    device: str = "cpu"
    budget_s: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    audio_window_frames: int = Field(50, ge=4)
    renderer_lr: float = Field(1e-4, gt=0)
    audio_lr: float = Field(3e-4, gt=0)
    smoothing_lr: float = Field(1e-6, gt=0)
    lambda_rec: float = 20.0
    lambda_adv: float = 1.0
    vgg_weights: Path | None = None
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    val_every: int = Field(200, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    seed: int = 0
    audio_fusion: bool = True
    smoothing: bool = True
    erosion: bool = True
    dependency: bool = True
    show_progress: bool = True
    reference_frames: int | None = Field(None, ge=1)
    stability_report: bool = True
    voice_augmentation: bool = True
    tracker_model: Path | None = None
    compile: bool = False

    @model_validator(mode="after")
    def _length(self) -> TrainSettings:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give --steps or --epochs, not both")
        if self.budget_s is not None and (self.steps is not None or self.epochs is not None):
            raise ValueError("give --budget or --steps/--epochs, not both")
        if self.budget_s is not None and self.resume:
            raise ValueError("--resume continues a run counted in steps; a --budget run starts afresh")
        return self

    def stages(self) -> list[Stage]:
        if self.stage == "all":
            return ["a2e", "renderer", "joint"] if self.smoothing else ["a2e", "renderer"]
        return [self.stage]


CPU_BATCH = 2
# Sequences per step on a GPU: the dataset is small and resident, so a batch fills the device.
# Not measured here (no GPU on the development machine); see docs/training.md.
GPU_BATCH = {"paper": 8, "small": 16, "live": 32, "mini": 32, "tiny": 32}


def resolved_batch_size(batch_size: int | None, preset: str, device_type: str) -> int:
    """The batch a run uses: the one given, else 2 on a CPU and a preset's GPU batch on CUDA."""
    if batch_size is not None:
        return batch_size
    return GPU_BATCH.get(preset, 8) if device_type == "cuda" else CPU_BATCH
