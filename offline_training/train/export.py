"""Writing a trained avatar as a bundle (see :mod:`engines.bundle` for the format)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import cv2
from safetensors.numpy import save_file

from engines import render_io
from engines.bundle import MANIFEST, AvatarNetworks, save_networks, write_manifest
from engines.files import remove_path, staging_directory
from engines.nets import ModelConfig
from offline_training.dataset import AvatarDataset

PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 3]
BUNDLE_ENTRIES = ("weights", "reference", "face_model.safetensors")


def export_bundle(
    out: Path,
    dataset: AvatarDataset,
    config: ModelConfig,
    networks: AvatarNetworks,
    validation: dict[str, float],
    steps: dict[str, int],
    reference_frames: int | None = None,
) -> None:
    """Write the bundle files into ``out`` (beside any training folder); ``avatar.json`` goes last,
    so a folder without it is never mistaken for a finished avatar.

    ``reference_frames`` keeps only the first that many frames as the reference video the
    avatar plays (a smaller bundle); default all."""
    count = len(dataset) if reference_frames is None else min(reference_frames, len(dataset))
    with staging_directory(out / "bundle") as staging:
        _write_reference(staging, dataset, config.renderer.image_size, count)
        save_networks(staging, networks)
        shutil.copy2(dataset.root / "face_model.safetensors", staging / "face_model.safetensors")
        (out / MANIFEST).unlink(missing_ok=True)
        for entry in BUNDLE_ENTRIES:
            remove_path(out / entry)
            (staging / entry).rename(out / entry)
    source = dataset.manifest.source
    training: dict[str, float | int | str] = {f"steps_{stage}": count for stage, count in steps.items()}
    # JSON has no NaN: a metric that could not be measured is left out.
    training.update(
        {key.replace("/", "_"): value for key, value in validation.items() if math.isfinite(value)}
    )
    training["source_video_sha256"] = source.video_sha256
    training["source_video_name"] = source.video_name
    write_manifest(
        out,
        {
            "name": dataset.root.name,
            "model": config.model_dump(),
            "fps": dataset.manifest.fps,
            "sample_rate_hz": dataset.manifest.sample_rate_hz,
            "crop_box": dataset.manifest.crop_box,
            "full_frame_size": (source.video_width, source.video_height),
            "reference_frames": count,
            "audio_stats": {
                "mean": dataset.manifest.audio_features.mean,
                "std": dataset.manifest.audio_features.std,
            },
            "training": training,
        },
    )


def _write_reference(staging: Path, dataset: AvatarDataset, size: int, count: int) -> None:
    reference = staging / "reference"
    (reference / "crops").mkdir(parents=True)
    (reference / "full").mkdir()
    save_file(
        {
            "mouth_params": dataset.mouth_params[:count],
            "upper_params": dataset.upper_params[:count],
            "pose_scale": dataset.pose.scale[:count],
            "pose_rotation": dataset.pose.rotation[:count],
            "pose_translation": dataset.pose.translation[:count],
            "landmarks": dataset.landmarks[:count],
            "source_frame_index": dataset.source_frame_index[:count],
        },
        str(reference / "arrays.safetensors"),
    )
    for index in range(count):
        crop = render_io.fit_crop(dataset.frame(index), size)
        cv2.imwrite(str(reference / "crops" / f"{index:06d}.png"), crop[..., ::-1], PNG_FAST)
        shutil.copy2(dataset.full_frame_path(index), reference / "full" / f"{index:06d}.jpg")
