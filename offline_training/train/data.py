"""Training samples drawn from an avatar dataset, resized to the preset's image size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, cast

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from engines.geometry.layouts import anchors_for
from engines.geometry.raster import rasterize_face_shape
from offline_training.dataset import AvatarDataset
from offline_training.train.erosion import ErosionSettings, augment_mask, erode, noisy_mouth_params

MOUTH_WEIGHT = 2.0


@dataclass
class RendererBatch:
    """A batch of T-frame sequences for the renderer, all (B, T, ...).

    Attributes:
        eroded: (B, T, 3, S, S) eroded frames in [-1, 1].
        shapes: (B, T, 4, S, S) face shapes in [0, 1].
        audio: (B, T, A) per-frame audio features.
        params: (B, T, Em) mouth parameters over their std (the smoothing input).
        target: (B, T, 3, S, S) true frames in [-1, 1].
        weights: (B, T, 1, S, S) L1 weights, 2 in the mouth mask and 1 outside (Eq. 5).
    """

    eroded: Tensor
    shapes: Tensor
    audio: Tensor
    params: Tensor
    target: Tensor
    weights: Tensor

    def to(self, device: torch.device) -> RendererBatch:
        return RendererBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


ArrayT = TypeVar("ArrayT", bound=np.generic)


def _resize(image: npt.NDArray[ArrayT], size: int, nearest: bool = False) -> npt.NDArray[ArrayT]:
    if image.shape[0] == size:
        return image
    flags = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR)
    return cast(
        npt.NDArray[ArrayT],
        np.asarray(
            cv2.resize(
                np.asarray(image, dtype=np.float32)
                if image.dtype != np.uint8
                else np.asarray(image, dtype=np.uint8),
                (size, size),
                interpolation=flags,
            ),
            dtype=image.dtype,
        ),
    )


def _to_signed(frame: npt.NDArray[np.uint8]) -> Tensor:
    return torch.from_numpy(frame).permute(2, 0, 1).float() / 127.5 - 1.0


class RendererSamples:
    """Draws renderer training sequences (with augmented erosion) or fixed validation sequences."""

    def __init__(
        self,
        dataset: AvatarDataset,
        indices: npt.NDArray[np.int64],
        length: int,
        image_size: int,
        augment: bool,
        erosion: ErosionSettings | None = None,
    ) -> None:
        self.dataset = dataset
        self.length = length
        self.size = image_size
        self.augment = augment
        self.erosion = erosion or ErosionSettings()
        self.starts = dataset.sequence_starts(length, indices)
        if len(self.starts) == 0:
            raise ValueError(f"no run of {length} consecutive frames with a face in this split")
        model = dataset.face_model
        self._model = model
        self._anchors = anchors_for(model.layout)
        self._mouth_std = np.maximum(model.mouth_std, 1e-6)
        self._params = dataset.mouth_params
        self._upper = dataset.upper_params
        self._pose = dataset.pose
        self._features = dataset.all_audio_features
        self._per = dataset.manifest.audio_features.frames_per_video_frame
        self._source = dataset.source_frame_index

    def __len__(self) -> int:
        return len(self.starts)

    def _noisy_shapes(
        self, frames: npt.NDArray[np.int64], rng: np.random.Generator
    ) -> list[npt.NDArray[np.float32]]:
        params = noisy_mouth_params(self._params[frames], self._model.mouth_std, rng, self.erosion)
        posed = self._pose.select(frames).apply(self._model.shapes(params, self._upper[frames]))
        box = self.dataset.crop_box
        return [
            rasterize_face_shape(
                box.to_crop_points(points, self.size),
                self._model.triangles,
                self._model.vertex_code,
                self._anchors.inner_lip_ring,
                self.size,
            )
            for points in posed
        ]

    def sample(self, start: int, rng: np.random.Generator | None) -> RendererBatch:
        """One sequence starting at kept frame ``start`` (batch dimension 1)."""
        frames = np.arange(start, start + self.length)
        augmenting = self.augment and rng is not None
        noisy = None
        if augmenting and rng is not None and rng.uniform() < self.erosion.param_noise_probability:
            noisy = self._noisy_shapes(frames, rng)
        eroded, shapes, target, weights, audio = [], [], [], [], []
        for position, index in enumerate(frames):
            frame = _resize(self.dataset.frame(int(index)), self.size)
            mask = _resize(self.dataset.mouth_mask(int(index)), self.size, nearest=True)
            blank = mask
            if augmenting and rng is not None and rng.uniform() < self.erosion.mask_probability:
                blank = augment_mask(mask, rng, self.erosion)
            shape = (
                noisy[position]
                if noisy is not None
                else _resize(self.dataset.face_shape(int(index)), self.size)
            )
            eroded.append(_to_signed(erode(frame, blank)))
            target.append(_to_signed(frame))
            shapes.append(torch.from_numpy(np.ascontiguousarray(shape)).permute(2, 0, 1).float())
            weights.append(torch.from_numpy(np.where(mask > 0, MOUTH_WEIGHT, 1.0).astype(np.float32))[None])
            source = int(self._source[index])
            audio.append(
                torch.from_numpy(self._features[source * self._per : (source + 1) * self._per].reshape(-1))
            )
        params = torch.from_numpy(self._params[frames] / self._mouth_std)
        return RendererBatch(
            eroded=torch.stack(eroded)[None],
            shapes=torch.stack(shapes)[None],
            audio=torch.stack(audio)[None],
            params=params[None],
            target=torch.stack(target)[None],
            weights=torch.stack(weights)[None],
        )

    def batch(self, size: int, rng: np.random.Generator) -> RendererBatch:
        """``size`` random sequences."""
        picks = rng.choice(self.starts, size=size, replace=len(self.starts) < size)
        parts = [self.sample(int(start), rng) for start in picks]
        return RendererBatch(
            *(torch.cat([getattr(part, f) for part in parts]) for f in RendererBatch.__dataclass_fields__)
        )

    def fixed(self, count: int) -> list[int]:
        """Evenly spaced sequence starts, for validation."""
        positions = np.linspace(0, len(self.starts) - 1, num=min(count, len(self.starts)))
        return [int(self.starts[int(round(p))]) for p in positions]


class AudioWindows:
    """Windows of consecutive frames for audio-to-expression: audio features in, mouth params out."""

    def __init__(self, dataset: AvatarDataset, indices: npt.NDArray[np.int64], length: int) -> None:
        self.length = length
        self.starts = dataset.sequence_starts(length, indices)
        if len(self.starts) == 0:
            raise ValueError(f"no run of {length} consecutive frames with a face in this split")
        per = dataset.manifest.audio_features.frames_per_video_frame
        features = dataset.all_audio_features
        source = dataset.source_frame_index
        self._audio = np.stack([features[s * per : (s + 1) * per].reshape(-1) for s in source]).astype(
            np.float32
        )
        self._params = (dataset.mouth_params / np.maximum(dataset.face_model.mouth_std, 1e-6)).astype(
            np.float32
        )

    def windows(self, starts: npt.NDArray[np.int64] | list[int]) -> tuple[Tensor, Tensor]:
        """(B, L, A) audio and (B, L, Em) normalised parameters for the given starts."""
        audio = np.stack([self._audio[s : s + self.length] for s in starts])
        params = np.stack([self._params[s : s + self.length] for s in starts])
        return torch.from_numpy(audio), torch.from_numpy(params)

    def batch(self, size: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        return self.windows(rng.choice(self.starts, size=size, replace=len(self.starts) < size))
