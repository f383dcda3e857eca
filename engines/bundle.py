"""The avatar bundle: a self-contained, versioned folder that ``engines`` can run.

Layout (format 1)::

    avatar.json                       manifest: format, config, crop box, files with SHA-256
    face_model.safetensors            the per-avatar face model
    weights/audio2expression.safetensors
    weights/renderer.safetensors
    weights/smoothing.safetensors
    reference/arrays.safetensors      per reference frame: mouth/upper params, pose, landmarks
    reference/crops/000000.png        reference crops at the renderer's size (RGB)
    reference/full/000000.jpg         full reference frames, for pasting the render back

Anything else in the folder (training checkpoints, logs) is ignored. Loading checks the format
and every file's checksum and fails with one clear line when either is off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

import engines
from engines.audio.features import FeatureStats
from engines.bundle_paths import DEFAULT_AVATAR_DIR as DEFAULT_AVATAR_DIR  # re-exported
from engines.bundle_paths import MANIFEST as MANIFEST
from engines.errors import InputError
from engines.files import atomic_output, sha256_file
from engines.geometry.crop import CropBox
from engines.geometry.face_model import FaceModel
from engines.geometry.pose import HeadPose
from engines.nets import AdaptiveSmoothing, AudioToExpression, AudioToExpressionConfig, ModelConfig, Renderer
from engines.render_io import crop_mouth_mask

BUNDLE_FORMAT = 1
WEIGHT_FILES = {
    "audio2expression": "weights/audio2expression.safetensors",
    "renderer": "weights/renderer.safetensors",
    "smoothing": "weights/smoothing.safetensors",
}


class BundleManifest(BaseModel):
    """``avatar.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int
    created_with: str
    name: str
    model: ModelConfig
    fps: float
    sample_rate_hz: int
    crop_box: dict[str, float]
    full_frame_size: tuple[int, int]
    reference_frames: int
    audio_stats: dict[str, list[float]]
    training: dict[str, float | int | str]
    files: dict[str, str]


@dataclass
class AvatarNetworks:
    """The three networks of an avatar, in eval mode."""

    audio2expression: AudioToExpression
    renderer: Renderer
    smoothing: AdaptiveSmoothing

    def to(self, device: torch.device | str) -> AvatarNetworks:
        for module in (self.audio2expression, self.renderer, self.smoothing):
            module.to(device)
        return self


def build_networks(config: ModelConfig) -> AvatarNetworks:
    """Fresh networks for a config (random weights)."""
    return AvatarNetworks(
        audio2expression=AudioToExpression(config.audio),
        renderer=Renderer(config.renderer),
        smoothing=AdaptiveSmoothing(config.smoothing, config.audio.mouth_dims, config.audio.lookahead_frames),
    )


class ReferenceFrames:
    """The reference video the avatar plays: crops, masks, full frames and per-frame geometry."""

    def __init__(
        self,
        root: Path,
        arrays: dict[str, npt.NDArray[np.generic]],
        box: CropBox,
        size: int,
        face_model: FaceModel,
    ) -> None:
        self.root = root
        self.box = box
        self.size = size
        self.face_model = face_model
        self.mouth_params = arrays["mouth_params"].astype(np.float32)
        self.upper_params = arrays["upper_params"].astype(np.float32)
        self.pose = HeadPose(
            arrays["pose_scale"].astype(np.float32),
            arrays["pose_rotation"].astype(np.float32),
            arrays["pose_translation"].astype(np.float32),
        )
        self.landmarks = arrays["landmarks"].astype(np.float32)

    def __len__(self) -> int:
        return int(self.mouth_params.shape[0])

    def crop(self, index: int) -> npt.NDArray[np.uint8]:
        """(S, S, 3) uint8 RGB reference crop."""
        return _read_image(self.root / "reference" / "crops" / f"{index:06d}.png", rgb=True)

    def full_frame(self, index: int) -> npt.NDArray[np.uint8]:
        """(H, W, 3) uint8 RGB full reference frame."""
        return _read_image(self.root / "reference" / "full" / f"{index:06d}.jpg", rgb=True)

    def mouth_mask(self, index: int) -> npt.NDArray[np.uint8]:
        """(S, S) uint8 erosion mask of reference frame ``index``, 255 inside."""
        return crop_mouth_mask(self.landmarks[index], self.box, self.face_model, self.size)

    def ping_pong(self, count: int, start: int = 0) -> npt.NDArray[np.int64]:
        """Reference indices for ``count`` output frames, playing forwards then backwards (no jump cuts)."""
        frames = len(self)
        if frames == 1:
            return np.zeros(count, dtype=np.int64)
        period = 2 * (frames - 1)
        phase = (np.arange(count, dtype=np.int64) + start) % period
        return np.where(phase < frames, phase, period - phase)


def _read_image(path: Path, rgb: bool) -> npt.NDArray[np.uint8]:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: missing or unreadable")
    return np.ascontiguousarray(image[..., ::-1] if rgb else image, dtype=np.uint8)


@dataclass
class AvatarBundle:
    """A loaded avatar."""

    root: Path
    manifest: BundleManifest
    face_model: FaceModel
    networks: AvatarNetworks
    reference: ReferenceFrames

    @property
    def config(self) -> ModelConfig:
        return self.manifest.model

    @property
    def crop_box(self) -> CropBox:
        return CropBox.from_dict(self.manifest.crop_box)

    @property
    def audio_stats(self) -> FeatureStats:
        return FeatureStats.from_dict(self.manifest.audio_stats)

    @classmethod
    def load(cls, root: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> AvatarBundle:
        """Load a bundle folder.

        Raises:
            InputError: not a bundle, another format version, a missing or altered file.
        """
        root = Path(root)
        manifest = read_manifest(root)
        if verify:
            for name, digest in manifest.files.items():
                path = root / name
                if not path.is_file():
                    raise InputError(f"{root}: avatar file {name} is missing")
                if sha256_file(path) != digest:
                    raise InputError(
                        f"{root}: avatar file {name} does not match its checksum (altered or corrupt)"
                    )
        face_model = FaceModel.load(root / "face_model.safetensors")
        networks = build_networks(manifest.model)
        for key, name in WEIGHT_FILES.items():
            module = getattr(networks, key)
            try:
                module.load_state_dict(load_torch(str(root / name)))
            except (RuntimeError, OSError) as exc:
                raise InputError(
                    f"{root}: {name} does not fit the avatar's config ({str(exc).splitlines()[0]})"
                ) from exc
            module.eval()
        networks.to(device)
        arrays = load_numpy(str(root / "reference" / "arrays.safetensors"))
        reference = ReferenceFrames(
            root, arrays, CropBox.from_dict(manifest.crop_box), manifest.model.renderer.image_size, face_model
        )
        return cls(
            root=root, manifest=manifest, face_model=face_model, networks=networks, reference=reference
        )


def read_manifest(root: Path) -> BundleManifest:
    """Read and validate ``avatar.json``.

    Raises:
        InputError: missing, unreadable, of another format, or invalid.
    """
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(f"{root}: not an avatar (no {MANIFEST})")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from exc
    found = raw.get("format") if isinstance(raw, dict) else None
    if found != BUNDLE_FORMAT:
        raise InputError(
            f"{root}: avatar format {found!r}, this version of stableface reads format {BUNDLE_FORMAT}; "
            "train or convert the avatar with a matching version"
        )
    _single_lookahead(raw, path)
    try:
        return BundleManifest.model_validate(raw)
    except ValidationError as exc:
        raise InputError(
            f"{path}: invalid ({exc.error_count()} errors, first: {exc.errors()[0]['msg']})"
        ) from exc


def _single_lookahead(raw: dict[str, Any], path: Path) -> None:
    """Format 1 may repeat the look-ahead as ``model.smoothing.lookahead_frames``; it must equal
    ``model.audio.lookahead_frames``, the one the networks use, and is dropped here.

    Raises:
        InputError: the two disagree.
    """
    model = raw.get("model")
    if not isinstance(model, dict):
        return
    smoothing, audio = model.get("smoothing"), model.get("audio", {})
    if not isinstance(smoothing, dict) or "lookahead_frames" not in smoothing or not isinstance(audio, dict):
        return
    repeated = smoothing.pop("lookahead_frames")
    used = audio.get("lookahead_frames", AudioToExpressionConfig().lookahead_frames)
    if repeated != used:
        raise InputError(
            f"{path}: model.smoothing.lookahead_frames {repeated!r} differs from the audio model's "
            f"look-ahead {used!r}"
        )


def save_networks(root: Path, networks: AvatarNetworks) -> None:
    """Write the three networks' weights as safetensors under ``root/weights``."""
    (root / "weights").mkdir(parents=True, exist_ok=True)
    for key, name in WEIGHT_FILES.items():
        module = getattr(networks, key)
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_torch(state, str(root / name))


def write_manifest(root: Path, fields: dict[str, object]) -> BundleManifest:
    """Checksum every bundle file under ``root`` and write ``avatar.json``.

    Args:
        root: the bundle folder with its weights, face model and reference already written.
        fields: every manifest field but ``format``, ``created_with`` and ``files``.
    """
    files: dict[str, str] = {}
    for pattern in ("face_model.safetensors", "weights/*.safetensors", "reference/**/*"):
        for path in sorted(root.glob(pattern)):
            if path.is_file():
                files[path.relative_to(root).as_posix()] = sha256_file(path)
    manifest = BundleManifest.model_validate(
        {
            **fields,
            "format": BUNDLE_FORMAT,
            "created_with": f"stableface {engines.__version__}",
            "files": files,
        }
    )
    with atomic_output(root / MANIFEST) as partial:
        partial.write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest
