"""Reading an avatar dataset built by ``stableface prepare`` (see manifest.py for the layout)."""

from __future__ import annotations

import json
import wave
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import ValidationError
from safetensors.numpy import load_file

from engines.errors import InputError
from engines.geometry.crop import CropBox
from engines.geometry.face_model import FaceModel
from engines.geometry.pose import HeadPose
from offline_training.dataset.manifest import SCHEMA_VERSION, DatasetManifest

IndexArray = npt.NDArray[np.int64]

REQUIRED_FILES = ("manifest.json", "arrays.safetensors", "face_model.safetensors", "audio.wav")


@dataclass(frozen=True)
class Split:
    """Kept-frame indices for training and for validation (the held-out tail of the video)."""

    train: IndexArray
    validation: IndexArray


class AvatarDataset:
    """A dataset folder, opened and validated.

    Index ``i`` everywhere means the i-th *kept* frame (a frame with a face); its frame in the
    25 fps source is ``source_frame_index[i]``.
    """

    def __init__(self, root: Path, manifest: DatasetManifest, arrays: dict[str, npt.NDArray[np.generic]]):
        self.root = root
        self.manifest = manifest
        self._arrays = arrays

    @classmethod
    def open(cls, root: str | Path) -> AvatarDataset:
        """Open a dataset folder.

        Raises:
            InputError: not a dataset, a dataset of another schema version, or missing files.
        """
        root = Path(root)
        missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
        if missing:
            raise InputError(f"{root}: not a complete avatar dataset (missing {', '.join(missing)})")
        try:
            raw = json.loads((root / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{root}/manifest.json: unreadable ({exc})") from exc
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if version != SCHEMA_VERSION:
            raise InputError(
                f"{root}: dataset schema {version!r}, this version reads {SCHEMA_VERSION}; "
                "run stableface prepare again"
            )
        try:
            manifest = DatasetManifest.model_validate(raw)
        except ValidationError as exc:
            raise InputError(f"{root}/manifest.json: invalid ({exc.error_count()} errors)") from exc
        arrays = load_file(str(root / "arrays.safetensors"))
        if len(arrays["source_frame_index"]) != manifest.num_frames:
            raise InputError(f"{root}: arrays and manifest disagree on the frame count")
        return cls(root, manifest, arrays)

    def __len__(self) -> int:
        return self.manifest.num_frames

    @property
    def render_size(self) -> int:
        return self.manifest.render_size

    @property
    def crop_box(self) -> CropBox:
        return CropBox.from_dict(self.manifest.crop_box)

    @property
    def source_frame_index(self) -> IndexArray:
        """(K,) source frame of each kept frame, increasing."""
        return self._arrays["source_frame_index"].astype(np.int64)

    @property
    def landmarks(self) -> npt.NDArray[np.float32]:
        """(K, N, 3) tracked landmarks in full-frame pixels."""
        return self._arrays["landmarks"].astype(np.float32)

    @property
    def mouth_params(self) -> npt.NDArray[np.float32]:
        """(K, Em) mouth expression parameters: the audio-to-expression target."""
        return self._arrays["mouth_params"].astype(np.float32)

    @property
    def upper_params(self) -> npt.NDArray[np.float32]:
        """(K, Eu) upper-face parameters."""
        return self._arrays["upper_params"].astype(np.float32)

    @property
    def pose(self) -> HeadPose:
        """Per kept frame head pose."""
        return HeadPose(
            scale=self._arrays["pose_scale"].astype(np.float32),
            rotation=self._arrays["pose_rotation"].astype(np.float32),
            translation=self._arrays["pose_translation"].astype(np.float32),
        )

    @property
    def all_audio_features(self) -> npt.NDArray[np.float32]:
        """(num_source_frames * 4, n_mels) normalised log-mel features of the whole trimmed audio."""
        return self._arrays["audio_features"].astype(np.float32)

    def audio_features(self, index: int) -> npt.NDArray[np.float32]:
        """(4, n_mels) features belonging to kept frame ``index``."""
        per = self.manifest.audio_features.frames_per_video_frame
        source = int(self.source_frame_index[index])
        return self.all_audio_features[source * per : (source + 1) * per]

    @cached_property
    def face_model(self) -> FaceModel:
        return FaceModel.load(self.root / "face_model.safetensors")

    def _image(self, folder: str, index: int, flags: int) -> npt.NDArray[np.uint8]:
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} outside 0..{len(self) - 1}")
        path = self.root / folder / f"{index:06d}.png"
        image = cv2.imread(str(path), flags)
        if image is None:
            raise InputError(f"{path}: missing or unreadable")
        return np.asarray(image, dtype=np.uint8)

    def frame(self, index: int) -> npt.NDArray[np.uint8]:
        """(S, S, 3) uint8 RGB crop of kept frame ``index``."""
        return np.ascontiguousarray(self._image("frames", index, cv2.IMREAD_COLOR)[..., ::-1])

    def face_shape(self, index: int) -> npt.NDArray[np.float32]:
        """(S, S, 4) float32 in [0, 1]: canonical code xyz and inner-mouth mask."""
        image = self._image("shapes", index, cv2.IMREAD_UNCHANGED)
        return (image[..., [2, 1, 0, 3]].astype(np.float32) / 255.0).astype(np.float32)

    def full_frame_path(self, index: int) -> Path:
        """Path of the full source frame (JPEG) of kept frame ``index``."""
        return self.root / "full" / f"{index:06d}.jpg"

    def full_frame(self, index: int) -> npt.NDArray[np.uint8]:
        """(H, W, 3) uint8 RGB full source frame of kept frame ``index``."""
        image = cv2.imread(str(self.full_frame_path(index)), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"{self.full_frame_path(index)}: missing or unreadable")
        return np.ascontiguousarray(image[..., ::-1])

    def mouth_mask(self, index: int) -> npt.NDArray[np.uint8]:
        """(S, S) uint8, 255 inside the erosion region."""
        return self._image("masks", index, cv2.IMREAD_GRAYSCALE)

    def audio(self) -> npt.NDArray[np.float32]:
        """(S,) float32 16 kHz mono speech, trimmed to the video."""
        with wave.open(str(self.root / "audio.wav"), "rb") as handle:
            pcm = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
        return (pcm.astype(np.float32) / 32768.0).astype(np.float32)

    def split(self, validation_fraction: float = 0.2) -> Split:
        """Train on the head of the video, validate on its tail (never trained on).

        Args:
            validation_fraction: share of the *source* timeline held out at the end.
        """
        cut = int(round(self.manifest.num_source_frames * (1.0 - validation_fraction)))
        source = self.source_frame_index
        indices = np.arange(len(self), dtype=np.int64)
        return Split(train=indices[source < cut], validation=indices[source >= cut])

    def sequence_starts(self, length: int, indices: IndexArray) -> IndexArray:
        """Kept-frame indices ``i`` in ``indices`` that begin ``length`` frames consecutive in the
        source video and all inside ``indices`` (a sequence never spans a dropped frame)."""
        if length < 1:
            raise ValueError("length must be positive")
        allowed = np.zeros(len(self), dtype=bool)
        allowed[indices] = True
        source = self.source_frame_index
        starts = []
        for i in indices:
            end = int(i) + length
            if end <= len(self) and allowed[i:end].all() and source[end - 1] - source[i] == length - 1:
                starts.append(int(i))
        return np.array(starts, dtype=np.int64)
