"""``stableface ablate``, first half: train the model variants of the paper's Table V and render the
held-out tail of the video with each.

Every variant trains on the same dataset, preset, steps and seed (so the audio-to-expression stage,
which no switch touches, starts from the same weights and data order); each then re-renders the
validation tail of the video (never trained on) driven by that tail's own speech, over the tail's own
reference frames: self-reenactment, so the result can be compared with the real frames.

Output folder (results are cached: a variant whose render exists is taken, not trained again, and a
variant whose bundle exists is rendered without training)::

    OUT/models/<variant>-seed<k>/     the avatar bundle (and its training/ folder)
    OUT/renders/<variant>-seed<k>.npz frames (T, S, S, 3) uint8 RGB at the renderer's size, fps, first frame
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from engines.errors import InputError
from engines.files import atomic_output
from offline_training.dataset import AvatarDataset
from offline_training.train.settings import TrainSettings

if TYPE_CHECKING:
    from engines.bundle import AvatarBundle

logger = logging.getLogger(__name__)

ImageRGB = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Variant:
    """One row of Table V: which of the four StableFace parts the model keeps."""

    name: str
    label: str
    audio_fusion: bool = True
    smoothing: bool = True
    erosion: bool = True
    dependency: bool = True


VARIANTS: tuple[Variant, ...] = (
    Variant("full", "Full model"),
    Variant("no_audio_fusion", "w/o Audio Fusion Module", audio_fusion=False),
    Variant("no_smoothing", "w/o Adaptive Smoothing", smoothing=False),
    Variant("no_erosion", "w/o Augmented Erosion", erosion=False),
    Variant("no_dependency", "w/o Dependency Modeling", dependency=False),
    Variant("baseline", "Baseline Model", False, False, False, False),
)
VARIANT_NAMES = tuple(variant.name for variant in VARIANTS)


def variants_named(names: list[str] | None) -> list[Variant]:
    """The variants in Table V order; ``names`` picks some (unknown names are an InputError)."""
    if not names:
        return list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANT_NAMES))
    if unknown:
        raise InputError(f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANT_NAMES)}")
    return [variant for variant in VARIANTS if variant.name in names]


_TRAIN_DEFAULTS = TrainSettings.model_fields


@dataclass(frozen=True)
class TrainingPlan:
    """How every variant is trained (the same for all of them); defaults are ``TrainSettings``'s."""

    preset: str = _TRAIN_DEFAULTS["preset"].default
    steps: int | None = None
    epochs: float | None = None
    batch_size: int | None = _TRAIN_DEFAULTS["batch_size"].default
    device: str = _TRAIN_DEFAULTS["device"].default
    seed: int = _TRAIN_DEFAULTS["seed"].default
    vgg_weights: Path | None = None
    show_progress: bool = False


@dataclass(frozen=True)
class TailRender:
    """A variant's render of the held-out tail.

    Attributes:
        frames: (T, S, S, 3) uint8 RGB at the renderer's size.
        fps: frame rate.
        first_frame: dataset index of the first tail frame.
    """

    frames: ImageRGB
    fps: float
    first_frame: int


def tail_indices(dataset: AvatarDataset, validation_fraction: float = 0.2) -> npt.NDArray[np.int64]:
    """(T,) dataset indices of the held-out tail, one per 25 fps source frame (a source frame
    without a face takes the nearest kept frame)."""
    validation = dataset.split(validation_fraction).validation
    if len(validation) < 10:
        raise InputError(f"{dataset.root}: the held-out tail has {len(validation)} frames; need at least 10")
    source = dataset.source_frame_index
    wanted = np.arange(int(source[validation[0]]), int(source[validation[-1]]) + 1)
    nearest = np.clip(np.searchsorted(source, wanted), validation[0], validation[-1])
    return nearest.astype(np.int64)


def tail_audio(dataset: AvatarDataset, indices: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """(S,) float32 16 kHz speech under the tail frames ``indices`` (contiguous source frames)."""
    per_frame = dataset.manifest.sample_rate_hz / dataset.manifest.fps
    first = int(dataset.source_frame_index[indices[0]] - dataset.source_frame_index[0])
    start = int(round(first * per_frame))
    return dataset.audio()[start : start + int(round(len(indices) * per_frame))]


def truth_frames(dataset: AvatarDataset, indices: npt.NDArray[np.int64], size: int) -> ImageRGB:
    """(T, size, size, 3) uint8 RGB: the real crops of ``indices`` at the renderer's size."""
    import cv2

    frames = [dataset.frame(int(index)) for index in indices]
    if frames[0].shape[0] != size:
        frames = [
            np.asarray(cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA), dtype=np.uint8)
            for frame in frames
        ]
    return np.stack(frames)


def train_variant(dataset_path: Path, out: Path, variant: Variant, plan: TrainingPlan) -> Path:
    """Train ``variant`` into ``out`` unless a finished bundle is already there; returns ``out``."""
    from offline_training.train.settings import TrainSettings
    from offline_training.train.trainer import Trainer

    if (out / "avatar.json").is_file():
        logger.info("%s: taking the trained bundle in %s", variant.name, out)
        return out
    if plan.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--device {plan.device}: no CUDA device is available to train {variant.name}")
    settings = TrainSettings(
        dataset=dataset_path,
        out=out,
        preset=plan.preset,
        steps=plan.steps,
        epochs=plan.epochs,
        overwrite=True,
        device=plan.device,
        batch_size=plan.batch_size,
        vgg_weights=plan.vgg_weights,
        seed=plan.seed,
        audio_fusion=variant.audio_fusion,
        smoothing=variant.smoothing,
        erosion=variant.erosion,
        dependency=variant.dependency,
        show_progress=plan.show_progress,
        stability_report=False,  # the ablation measures every variant's tail itself
    )
    logger.info("%s: training (%s)", variant.name, variant.label)
    Trainer(settings).run()
    return out


def render_tail(
    bundle: Path | AvatarBundle, dataset: AvatarDataset, device: str = "cpu", mouth: str = "audio"
) -> TailRender:
    """Render the held-out tail with a trained bundle (offline path, centred smoothing, no paste).

    The bundle (a folder, or one already loaded) must keep every dataset frame as its reference
    video (the default of ``train``). ``mouth``: ``audio`` draws the audio model's mouth (what a
    user gets); ``tracked`` draws the mouth tracked in the tail itself, which leaves the audio
    model out of the measurement.
    """
    from engines.bundle import AvatarBundle
    from engines.offline_render import render_frames

    if mouth not in ("audio", "tracked"):
        raise ValueError(f"mouth must be 'audio' or 'tracked', got {mouth!r}")
    if not isinstance(bundle, AvatarBundle):
        bundle = AvatarBundle.load(bundle, device=device)
    if bundle.manifest.reference_frames < len(dataset):
        raise InputError(
            f"{bundle.root}: keeps {bundle.manifest.reference_frames} of the dataset's {len(dataset)} frames "
            "as reference; ablation needs them all (train without --reference-frames)"
        )
    indices = tail_indices(dataset)
    audio = tail_audio(dataset, indices)
    tracked = dataset.mouth_params[indices] if mouth == "tracked" else None
    frames = np.stack(
        list(render_frames(bundle, audio, paste=False, reference_index=indices, mouth_params=tracked))
    )
    return TailRender(frames=frames, fps=bundle.manifest.fps, first_frame=int(indices[0]))


def run_name(variant: Variant, seed: int) -> str:
    """The name of one trained model: ``<variant>-seed<k>``."""
    return f"{variant.name}-seed{seed}"


def render_path(out: Path, variant: Variant, seed: int) -> Path:
    return out / "renders" / f"{run_name(variant, seed)}.npz"


def save_render(path: Path, render: TailRender) -> None:
    """Write a render atomically (a crash never leaves a half-written file that looks finished)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as partial:
        np.savez_compressed(
            partial,
            frames=render.frames,
            fps=np.float64(render.fps),
            first_frame=np.int64(render.first_frame),
        )


def load_render(path: Path) -> TailRender:
    """Read a render written by :func:`save_render`."""
    try:
        with np.load(path) as data:
            frames = data["frames"]
            fps, first = float(data["fps"]), int(data["first_frame"])
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: not a render written by stableface ablate ({exc})") from exc
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(
            f"{path}: frames have shape {frames.shape} {frames.dtype}; expected (T, S, S, 3) uint8"
        )
    return TailRender(frames=frames, fps=fps, first_frame=first)


def train_and_render(
    dataset_path: Path, out: Path, variants: list[Variant], plan: TrainingPlan, seeds: list[int]
) -> dict[tuple[str, int], TailRender]:
    """Train (or take) every variant once per seed and render (or take) its tail.

    Returns:
        renders by (variant name, seed).
    """
    dataset = AvatarDataset.open(dataset_path)
    renders: dict[tuple[str, int], TailRender] = {}
    for seed in seeds:
        for variant in variants:
            path = render_path(out, variant, seed)
            if path.is_file():
                logger.info("%s: taking the render in %s", run_name(variant, seed), path)
                renders[variant.name, seed] = load_render(path)
                continue
            model = out / "models" / run_name(variant, seed)
            bundle = train_variant(dataset_path, model, variant, replace(plan, seed=seed))
            render = render_tail(bundle, dataset, plan.device)
            save_render(path, render)
            renders[variant.name, seed] = render
    return renders
