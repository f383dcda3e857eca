"""Other voices for the audio-to-expression stage: the speaker's own training audio, changed.

A few minutes of one speaker teach the audio model that one voice; users drive avatars with
text-to-speech voices and other people on a call. Each variant takes a stretch of the training
audio and plays it at another speed (tempo, pitch and formants move together, as for another
vocal tract), sometimes in a room, through a random channel or a narrow-band phone codec, under
coloured noise or a babble of generated voices, at another level
(:mod:`offline_training.audio_augmentation`). Its mouth targets are the original frames'
parameters re-timed to the new speed. Its features are normalised over the variant, as inference
normalises each utterance. The held-out tail is never used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from engines.audio.features import log_mel_for_video, normalise, utterance_stats
from offline_training.audio_augmentation import (
    at_snr,
    babble,
    channel,
    codec,
    coloured_noise,
    reverberate,
    speed_change,
)
from offline_training.dataset import AvatarDataset
from offline_training.train.data import AudioWindows

VARIANTS = 16
MAX_VARIANT_S = 30.0
OWN_SHARE = 0.5  # share of training windows taken from the unchanged recording
SPEED_RANGE = (0.85, 1.2)

FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int64]
Signal = npt.NDArray[np.float64]


@dataclass(frozen=True)
class VoiceVariant:
    """One changed copy of a stretch of the training audio, frame by frame.

    Attributes:
        audio: (T, A) per-frame audio features, normalised over the variant.
        params: (T, Em) mouth parameters over their std; NaN where the source frame had no face.
        starts: window starts whose frames all have a target.
    """

    audio: FloatArray
    params: FloatArray
    starts: IndexArray


def _params_by_source(dataset: AvatarDataset, indices: IndexArray) -> tuple[int, FloatArray]:
    """(first source frame, (F, Em) normalised parameters of source frames first..last; NaN where
    the frame was dropped or is outside ``indices``)."""
    source = dataset.source_frame_index
    first, last = int(source[0]), int(source[indices].max())
    params = dataset.mouth_params / np.maximum(dataset.face_model.mouth_std, 1e-6)
    table = np.full((last - first + 1, params.shape[1]), np.nan, np.float32)
    table[source[indices] - first] = params[indices]
    return first, table


def _change_voice(
    audio: npt.NDArray[np.float64], rng: np.random.Generator, seed: int
) -> npt.NDArray[np.float64]:
    """Room, channel or codec, noise or babble, and level, on an already re-timed voice."""
    total = len(audio)
    active = np.abs(audio) > 0.1 * float(np.abs(audio).max() + 1e-12)
    if rng.uniform() < 0.4:
        audio = reverberate(audio, rng)
    audio = codec(audio, rng) if rng.uniform() < 0.2 else channel(audio, rng)
    roll = rng.uniform()
    if roll < 0.4:
        audio = audio + at_snr(audio, coloured_noise(total, rng), rng.uniform(5.0, 30.0), active)
    elif roll < 0.65:
        audio = audio + at_snr(audio, babble(total, seed, rng), rng.uniform(10.0, 30.0), active)
    peak = float(np.abs(audio).max()) + 1e-12
    scaled: Signal = audio * 10 ** (rng.uniform(-25.0, -1.0) / 20) / peak
    return scaled


def make_variants(
    dataset: AvatarDataset, indices: IndexArray, window: int, seed: int, count: int = VARIANTS
) -> list[VoiceVariant]:
    """``count`` changed voices from the audio under the training frames ``indices``.

    Args:
        window: frames per training window (a variant shorter than that is left out).
        seed: makes the variants reproducible.
    """
    fps, rate = dataset.manifest.fps, dataset.manifest.sample_rate_hz
    per_frame = rate / fps
    _, table = _params_by_source(dataset, indices)
    speech = dataset.audio().astype(np.float64)
    frames = min(len(table), int(len(speech) / per_frame))
    variants = []
    for k in range(count):
        rng = np.random.default_rng([seed, 7_027, k])
        factor = float(rng.uniform(*SPEED_RANGE))
        span = min(frames, int(MAX_VARIANT_S * fps * factor))
        begin = int(rng.integers(0, frames - span + 1))
        stretch = speech[int(begin * per_frame) : int((begin + span) * per_frame)]
        audio = _change_voice(speed_change(stretch, factor), rng, seed * 1_000 + k)
        length = int(len(audio) / per_frame)
        if length < window:
            continue
        features = log_mel_for_video(audio.astype(np.float32), length, fps)
        features = normalise(features, utterance_stats(features)).reshape(length, -1)
        taken = np.clip(np.round(begin + np.arange(length) * factor).astype(np.int64), 0, len(table) - 1)
        params = table[taken]
        known = ~np.isnan(params).any(axis=1)
        runs = np.convolve(known.astype(np.int64), np.ones(window, np.int64), mode="valid")
        starts = np.flatnonzero(runs == window).astype(np.int64)
        if len(starts):
            variants.append(VoiceVariant(features.astype(np.float32), params, starts))
    return variants


class MixedAudioWindows:
    """Training windows for audio-to-expression: half from the recording, half from its variants."""

    def __init__(self, own: AudioWindows, variants: list[VoiceVariant], own_share: float = OWN_SHARE) -> None:
        self.own = own
        self.variants = variants
        self.own_share = own_share if variants else 1.0
        self.starts = own.starts
        self.length = own.length

    def batch(self, size: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """(B, L, A) audio and (B, L, Em) targets."""
        audio, params = [], []
        for _ in range(size):
            if rng.uniform() < self.own_share:
                a, p = self.own.windows([int(rng.choice(self.own.starts))])
                audio.append(a[0])
                params.append(p[0])
                continue
            variant = self.variants[int(rng.integers(len(self.variants)))]
            start = int(rng.choice(variant.starts))
            audio.append(torch.from_numpy(variant.audio[start : start + self.length]))
            params.append(torch.from_numpy(variant.params[start : start + self.length]))
        return torch.stack(audio), torch.stack(params)
