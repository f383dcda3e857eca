"""Training samples drawn from an avatar dataset, resized to the preset's image size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from engines import render_io
from offline_training.dataset import AvatarDataset
from offline_training.train.erosion import ErosionSettings, augment_mask, noisy_mouth_params

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


class RendererSamples:
    """Draws renderer training sequences (with augmented erosion) or fixed validation sequences.

    Each frame's crop (at the renderer's size) and mouth mask are decoded once and kept in memory
    (a 5-minute video at 256 px: about 1.5 GB), so a step after the first pass reads no files.
    """

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
        self._model = dataset.face_model
        self._mouth_std = np.maximum(self._model.mouth_std, 1e-6)
        self._params = dataset.mouth_params
        self._upper = dataset.upper_params
        self._pose = dataset.pose
        self._landmarks = dataset.landmarks
        self._box = dataset.crop_box
        self._features = dataset.all_audio_features
        self._per = dataset.manifest.audio_features.frames_per_video_frame
        self._source = dataset.source_frame_index
        self._crops: dict[int, npt.NDArray[np.uint8]] = {}
        self._masks: dict[int, npt.NDArray[np.uint8]] = {}

    def _crop_and_mask(self, index: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
        """(S, S, 3) crop and (S, S) erosion mask of kept frame ``index``, decoded once."""
        if index not in self._crops:
            self._crops[index] = render_io.fit_crop(self.dataset.frame(index), self.size)
            self._masks[index] = render_io.crop_mouth_mask(
                self._landmarks[index], self._box, self._model, self.size
            )
        return self._crops[index], self._masks[index]

    def __len__(self) -> int:
        return len(self.starts)

    def _face_shapes(self, frames: npt.NDArray[np.int64], mouth_params: npt.NDArray[np.float32]) -> Tensor:
        """(T, 4, S, S) face shapes of the given frames with the given raw mouth parameters (T, Em)."""
        shapes = render_io.face_shapes(
            self._model, self._box, self.size, self._pose.select(frames), mouth_params, self._upper[frames]
        )
        return torch.from_numpy(shapes)

    def sample(self, start: int, rng: np.random.Generator | None) -> RendererBatch:
        """One sequence starting at kept frame ``start`` (batch dimension 1).

        Its inputs are built exactly as streaming builds them (:mod:`engines.render_io`): the crop
        resized to the renderer's size, the erosion mask from the frame's landmarks, the face shape
        rasterised from the mouth parameters — disturbed by augmented erosion when ``rng`` is given.
        """
        frames = np.arange(start, start + self.length)
        mouth_params = self._params[frames]
        if rng is not None and self.augment and rng.uniform() < self.erosion.param_noise_probability:
            mouth_params = noisy_mouth_params(mouth_params, self._model.mouth_std, rng, self.erosion)
        eroded, target, weights, audio = [], [], [], []
        for index in frames.tolist():
            frame, mask = self._crop_and_mask(index)
            blank = mask
            if rng is not None and self.augment and rng.uniform() < self.erosion.mask_probability:
                blank = augment_mask(mask, rng, self.erosion)
            eroded.append(render_io.eroded_input(frame, blank))
            target.append(render_io.to_signed(frame))
            weights.append(np.where(mask > 0, MOUTH_WEIGHT, 1.0).astype(np.float32)[None])
            source = int(self._source[index])
            audio.append(self._features[source * self._per : (source + 1) * self._per].reshape(-1))
        params = torch.from_numpy(self._params[frames] / self._mouth_std)
        return RendererBatch(
            eroded=torch.from_numpy(np.stack(eroded))[None],
            shapes=self._face_shapes(frames, mouth_params)[None],
            audio=torch.from_numpy(np.stack(audio))[None],
            params=params[None],
            target=torch.from_numpy(np.stack(target))[None],
            weights=torch.from_numpy(np.stack(weights))[None],
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
