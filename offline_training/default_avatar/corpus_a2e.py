"""Audio-to-expression trained on a corpus of augmented generated speech instead of the avatar's clip.

The synthetic avatar's mouth has one degree of freedom, the opening the generator asked for, so
its tracked mouth parameters are a smooth function of that opening. :class:`OpeningToParams` fits
that function on the avatar's dataset; every corpus utterance then gets its parameter targets
from its opening, and the audio model learns from hours of varied voices rather than seconds of one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from engines.audio.features import FeatureStats, log_mel_for_video, normalise, utterance_stats
from engines.nets import AudioToExpression
from offline_training.default_avatar.speech_corpus import make_utterance

logger = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float32]
POLY_DEGREE = 2


@dataclass(frozen=True)
class OpeningToParams:
    """Mouth parameters (in units of their std) as a polynomial of the mouth opening.

    Attributes:
        coefficients: (POLY_DEGREE + 1, Em), row k multiplies opening**k.
    """

    coefficients: FloatArray

    @classmethod
    def fit(cls, opening: FloatArray, params: FloatArray) -> OpeningToParams:
        """Least squares on (T,) openings in [0, 1] and (T, Em) normalised parameters."""
        basis = np.stack([opening.astype(np.float64) ** k for k in range(POLY_DEGREE + 1)], axis=1)
        coefficients, *_ = np.linalg.lstsq(basis, params.astype(np.float64), rcond=None)
        return cls(coefficients.astype(np.float32))

    def __call__(self, opening: FloatArray) -> FloatArray:
        """(T,) openings → (T, Em) normalised parameters."""
        basis = np.stack([opening**k for k in range(POLY_DEGREE + 1)], axis=1).astype(np.float32)
        params: FloatArray = basis @ self.coefficients
        return params

    def explained_variance(self, opening: FloatArray, params: FloatArray, weights: FloatArray) -> float:
        """Share of the parameters' variance the fit explains, each parameter weighted by (Em,)
        ``weights`` (std over mean std: the share of the motion it carries)."""
        residual = (params - self(opening)) * weights
        total = (params * weights).var(0).sum()
        return float(1.0 - residual.var(0).sum() / max(float(total), 1e-12))


@dataclass(frozen=True)
class CorpusSettings:
    """Size of the corpus and of the audio-model training.

    Attributes:
        seed: first utterance seed; utterance k uses seed + k.
        utterances: how many utterances are generated.
        seconds: length of each.
        steps: optimiser steps.
        batch_size: windows per step.
        window_frames: frames per window (the streaming audio window).
        learning_rate: AdamW learning rate (cosine decay to a tenth).
        stats_jitter: std of a random per-band shift of the normalisation (simulates the running
            statistics of a live stream), in units of the band's std.
    """

    seed: int = 0
    utterances: int = 600
    seconds: float = 8.0
    steps: int = 10000
    batch_size: int = 16
    window_frames: int = 50
    learning_rate: float = 1e-3
    stats_jitter: float = 0.25


class Corpus:
    """Normalised features and parameter targets of generated utterances."""

    def __init__(
        self, settings: CorpusSettings, mapping: OpeningToParams, show_progress: bool = False
    ) -> None:
        from tqdm import tqdm

        self.settings = settings
        self.features: list[FloatArray] = []
        self.raw: list[FloatArray] = []
        self.targets: list[FloatArray] = []
        self.openings: list[FloatArray] = []
        seeds = range(settings.seed, settings.seed + settings.utterances)
        for seed in tqdm(seeds, desc="speech corpus", unit="utt", disable=not show_progress):
            utterance = make_utterance(seed, settings.seconds)
            raw = log_mel_for_video(utterance.audio, len(utterance.opening))
            self.raw.append(raw)
            self.features.append(normalise(raw, utterance_stats(raw)))
            self.targets.append(mapping(utterance.opening))
            self.openings.append(utterance.opening)

    def stats(self) -> FeatureStats:
        """Per-band statistics over the whole corpus (a live stream's starting point)."""
        return utterance_stats(np.concatenate(self.raw))

    def batch(self, rng: np.random.Generator, size: int) -> tuple[Tensor, Tensor]:
        """(B, W, 4·n_mels) features and (B, W, Em) targets of random windows."""
        window = self.settings.window_frames
        audio, target = [], []
        for pick in rng.integers(0, len(self.features), size=size):
            features, params = self.features[pick], self.targets[pick]
            frames = len(params)
            start = int(rng.integers(0, frames - window + 1))
            rows = features[4 * start : 4 * (start + window)]
            shift = rng.normal(scale=self.settings.stats_jitter, size=rows.shape[1]).astype(np.float32)
            scale = np.float32(np.exp(rng.normal(scale=0.1)))
            audio.append(((rows + shift) * scale).reshape(window, -1))
            target.append(params[start : start + window])
        return torch.from_numpy(np.stack(audio)), torch.from_numpy(np.stack(target))


def train_on_corpus(
    model: AudioToExpression,
    corpus: Corpus,
    weights: Tensor,
    seed: int,
    show_progress: bool = False,
) -> float:
    """Train ``model`` in place on the corpus; returns the final mean loss of the last 100 steps.

    Args:
        model: the audio model, its output size matching the corpus targets.
        corpus: training windows.
        weights: (Em,) per-parameter loss weights (std over mean std).
        seed: random seed of the window draws.
        show_progress: tqdm bar.
    """
    from tqdm import tqdm

    settings = corpus.settings
    rng = np.random.default_rng([seed, 77])
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, settings.steps, eta_min=settings.learning_rate / 10
    )
    recent: list[float] = []
    for _ in tqdm(range(settings.steps), desc="audio model", unit="step", disable=not show_progress):
        audio, target = corpus.batch(rng, settings.batch_size)
        prediction = model(audio)
        error = (prediction - target) * weights
        loss = error.abs().mean() + 0.5 * (error[:, 1:] - error[:, :-1]).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        recent = [*recent, float(loss.detach())][-100:]
    model.eval()
    return float(np.mean(recent))
