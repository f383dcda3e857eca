"""Benchmark-only avatars of any network preset, made on the spot with nothing downloaded.

``preset_avatar("small", folder)`` writes a bundle with the bundled default avatar's face model,
reference arrays and full reference frames, its reference crops resized to the preset's image size
(``ReferenceFrames`` reads crops as stored, so they must already be at the renderer's size), and
freshly initialised, seeded, **untrained** networks of the preset (the manifest's name and
``training`` fields say so). Such an avatar renders noise-like faces: it is for measuring speed,
never quality. The bundle is written atomically and reused when already there; its folder name
keys it by preset, seed and bundle format.

    python benchmarks/preset_avatar.py small [--folder results/avatars] [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from engines import render_io
from engines.bundle import (
    BUNDLE_FORMAT,
    DEFAULT_AVATAR_DIR,
    MANIFEST,
    build_networks,
    read_manifest,
    save_networks,
    write_manifest,
)
from engines.errors import InputError, OutputError
from engines.files import atomic_directory
from engines.geometry.face_model import FaceModel
from engines.nets.config import PRESETS

UNTRAINED = "untrained"
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 3]


def preset_avatar_name(preset: str, seed: int = 0) -> str:
    """The folder name (and cache key) of a preset's benchmark avatar: preset, seed, bundle format."""
    return f"bench-{preset}-{UNTRAINED}-s{seed}-f{BUNDLE_FORMAT}"


def preset_avatar(preset: str, folder: Path, seed: int = 0, source: Path = DEFAULT_AVATAR_DIR) -> Path:
    """A benchmark avatar bundle of ``preset`` under ``folder``, made if missing.

    Args:
        preset: a key of ``engines.nets.config.PRESETS`` (tiny, mini, small, paper).
        folder: where benchmark avatars are kept (made if missing).
        seed: seed of the networks' random initialisation.
        source: the avatar whose face model and reference video are used (the bundled default).

    Returns:
        The bundle folder ``folder / preset_avatar_name(preset, seed)``; it loads with
        ``AvatarBundle.load`` and streams with any backend.

    Raises:
        InputError: an unknown preset, or ``source`` is not an avatar.
        OutputError: the bundle cannot be written.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; one of {', '.join(sorted(PRESETS))}")
    path = Path(folder) / preset_avatar_name(preset, seed)
    if (path / MANIFEST).is_file():
        return path
    manifest = read_manifest(source)
    face_model = FaceModel.load(source / "face_model.safetensors")
    config = PRESETS[preset].with_mouth_dims(face_model.mouth_dims)
    size = config.renderer.image_size
    try:
        with atomic_directory(path) as staging:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                networks = build_networks(config)
            save_networks(staging, networks)
            shutil.copy2(source / "face_model.safetensors", staging / "face_model.safetensors")
            (staging / "reference" / "crops").mkdir(parents=True)
            shutil.copy2(
                source / "reference" / "arrays.safetensors", staging / "reference" / "arrays.safetensors"
            )
            shutil.copytree(source / "reference" / "full", staging / "reference" / "full")
            for crop in sorted((source / "reference" / "crops").glob("*.png")):
                image = cv2.imread(str(crop), cv2.IMREAD_COLOR)
                if image is None:
                    raise InputError(f"{crop}: unreadable reference crop")
                cv2.imwrite(
                    str(staging / "reference" / "crops" / crop.name),
                    render_io.fit_crop(np.asarray(image, np.uint8), size),
                    PNG_FAST,
                )
            write_manifest(
                staging,
                {
                    "name": f"bench-{preset}-{UNTRAINED}",
                    "model": config.model_dump(),
                    "fps": manifest.fps,
                    "sample_rate_hz": manifest.sample_rate_hz,
                    "crop_box": manifest.crop_box,
                    "full_frame_size": manifest.full_frame_size,
                    "reference_frames": manifest.reference_frames,
                    "audio_stats": manifest.audio_stats,
                    "training": {
                        "status": f"{UNTRAINED}: random networks (seed {seed}), for speed benchmarks only",
                        "seed": seed,
                        "source_avatar": manifest.name,
                    },
                },
            )
    except OutputError:
        if (path / MANIFEST).is_file():  # made meanwhile by another process
            return path
        raise
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument(
        "--folder", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "avatars"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(preset_avatar(args.preset, args.folder, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
