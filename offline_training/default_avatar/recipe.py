"""``stableface build-default``: the bundled default avatar, rebuilt from nothing but a seed.

1. Generate the synthetic talking face (scikit-image's public-domain astronaut portrait mouthing the
   project's generated speech) and prepare it like any user video.
2. Train the renderer on it with ``stableface train``'s trainer, then (for a preset with adaptive
   smoothing, such as the default ``live``) the renderer with the smoothing jointly, the paper's
   schedule; see ``engines.nets.config``.
3. Replace the audio model with one trained on a corpus of augmented generated speech
   (:mod:`offline_training.default_avatar.speech_corpus`), so that it follows voices, languages
   and noise it never heard rather than the one toy voice of the clip.
4. Write the bundle (a short reference video keeps it small) with a provenance note and the ONNX
   export of its live streaming shapes (so that the first ``serve`` does not spend seconds
   exporting), replacing ``out`` only once everything is written.

No file outside the project and its dependencies is read: no recording of anyone, and none of the
real clips the tests use.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import save_file

from engines.bundle import MANIFEST, WEIGHT_FILES, read_manifest, write_manifest
from engines.errors import OutputError
from engines.files import atomic_directory
from engines.nets import AudioToExpression
from offline_training.dataset import AvatarDataset
from offline_training.dataset.builder import prepare_dataset
from offline_training.dataset.settings import PrepareSettings
from offline_training.default_avatar.corpus_a2e import (
    Corpus,
    CorpusSettings,
    OpeningToParams,
    train_on_corpus,
)
from offline_training.synthetic import generate_talking_face, write_talking_face
from offline_training.train.settings import TrainSettings
from offline_training.train.trainer import Trainer

logger = logging.getLogger(__name__)
BUNDLE_ENTRIES = (MANIFEST, "face_model.safetensors", "weights", "reference")
PROVENANCE = "PROVENANCE.md"
ONNX_EXPORTS = "engines"  # engines.backends.onnx_export.onnx_export_dir


@dataclass(frozen=True)
class DefaultAvatarRecipe:
    """Everything that decides the default avatar.

    Attributes:
        seed: seed of the clip, the training draws and the speech corpus.
        clip_seconds: length of the generated training clip.
        frame_size: side of its frames (the avatar's full output frame).
        preset: network sizes.
        renderer_steps: renderer steps; the joint stage (renderer + adaptive smoothing) gets a fifth
            of them, for a preset with smoothing.
        smoothing_lr: learning rate of the adaptive smoothing in the joint stage (the paper's 1e-6
            is for 20 epochs on a GPU; a fifth of a short CPU schedule at that rate leaves the
            smoothing where it started, next to the identity).
        batch_size: renderer sequences per step.
        reference_frames: frames of the clip kept as the reference video the avatar plays.
        crop_margin: margin of the crop box around the face (the clip's head barely moves, so a
            tight crop puts the renderer's pixels on the face).
        pose_steadying: ``prepare``'s head-pose steadying, in frames. 0: the bundled avatar was
            built before ``prepare`` steadied poses, and a recipe must rebuild the bundle it
            describes; a rebuild with steadying must re-measure the default avatar's table.
        export_onnx: also write the ONNX export for the avatar's streaming shapes.
        corpus: the audio model's speech corpus and training.
    """

    seed: int = 0
    clip_seconds: float = 40.0
    frame_size: int = 256
    preset: str = "live"
    renderer_steps: int = 2500
    smoothing_lr: float = 1e-4
    batch_size: int = 4
    reference_frames: int = 200
    crop_margin: float = 0.15
    pose_steadying: float = 0.0
    export_onnx: bool = True
    corpus: CorpusSettings = field(default_factory=CorpusSettings)


@dataclass
class BuildReport:
    """What a build made and how long each part took."""

    out: Path
    size_bytes: int
    seconds: dict[str, float]
    opening_fit_explained: float
    audio_loss: float


def _timed(seconds: dict[str, float], name: str, started: float) -> float:
    now = time.perf_counter()
    seconds[name] = round(now - started, 1)
    return now


def build_default_avatar(out: Path, recipe: DefaultAvatarRecipe, show_progress: bool = True) -> BuildReport:
    """Build the default avatar bundle into ``out`` (replaced only when the new one is complete).

    Raises:
        OutputError: ``out``'s folder cannot be written.
    """
    out = out.resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build-default-", dir=out.parent))
    except OSError as exc:
        raise OutputError(f"cannot write beside {out} ({exc.strerror or exc})") from exc
    seconds: dict[str, float] = {}
    try:
        started = time.perf_counter()
        clip = generate_talking_face(recipe.seed, recipe.clip_seconds, size=recipe.frame_size)
        write_talking_face(work / "face.mp4", clip)
        started = _timed(seconds, "clip", started)
        prepare_dataset(
            PrepareSettings(
                video=work / "face.mp4",
                out=work / "dataset",
                render_size=_image_size(recipe),
                crop_margin=recipe.crop_margin,
                pose_steadying=recipe.pose_steadying,
                show_progress=show_progress,
            )
        )
        started = _timed(seconds, "prepare", started)
        avatar = work / "avatar"
        _train_renderer(work / "dataset", avatar, recipe, show_progress)
        started = _timed(seconds, "train_renderer", started)
        dataset = AvatarDataset.open(work / "dataset")
        explained, loss = _train_audio_model(avatar, dataset, clip.drawn_opening, recipe, show_progress)
        started = _timed(seconds, "train_audio", started)
        _write_provenance(avatar, recipe)
        if recipe.export_onnx:
            _export_onnx(avatar)
            started = _timed(seconds, "export_onnx", started)
        _replace(out, avatar)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    return BuildReport(out, size, seconds, explained, loss)


def _train_renderer(dataset: Path, avatar: Path, recipe: DefaultAvatarRecipe, show_progress: bool) -> None:
    """The renderer stage, then (for a preset with smoothing) the joint stage resumed from it."""
    from engines.nets import PRESETS

    settings = TrainSettings(
        dataset=dataset,
        out=avatar,
        preset=recipe.preset,
        stage="renderer",
        steps=recipe.renderer_steps,
        batch_size=recipe.batch_size,
        seed=recipe.seed,
        reference_frames=recipe.reference_frames,
        smoothing_lr=recipe.smoothing_lr,
        val_every=recipe.renderer_steps,
        checkpoint_every=10 * recipe.renderer_steps,
        show_progress=show_progress,
    )
    Trainer(settings).run()
    if PRESETS[recipe.preset].use_smoothing:
        joint_steps = max(1, recipe.renderer_steps // 5)
        joint = settings.model_copy(
            update={"stage": "joint", "steps": joint_steps, "resume": True, "val_every": joint_steps}
        )
        Trainer(joint).run()


def _image_size(recipe: DefaultAvatarRecipe) -> int:
    from engines.nets import PRESETS

    return PRESETS[recipe.preset].renderer.image_size


def _train_audio_model(
    avatar: Path,
    dataset: AvatarDataset,
    clip_opening: npt.NDArray[np.float32],
    recipe: DefaultAvatarRecipe,
    show_progress: bool,
) -> tuple[float, float]:
    """Train the audio model on the corpus and put it into the bundle at ``avatar``; returns the
    share of mouth motion the opening explains and the final training loss."""
    manifest = read_manifest(avatar)
    std = np.maximum(dataset.face_model.mouth_std, 1e-6).astype(np.float32)
    weights = std / std.mean()
    opening = clip_opening[dataset.source_frame_index].astype(np.float32)
    params = (dataset.mouth_params / std).astype(np.float32)
    mapping = OpeningToParams.fit(opening, params)
    explained = mapping.explained_variance(opening, params, weights)
    corpus_settings = CorpusSettings(
        **{**asdict(recipe.corpus), "window_frames": manifest.model.streaming.audio_window_frames}
    )
    corpus = Corpus(corpus_settings, mapping, show_progress)
    torch.manual_seed(recipe.seed)
    model = AudioToExpression(manifest.model.audio)
    loss = train_on_corpus(model, corpus, torch.from_numpy(weights), recipe.seed, show_progress)
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(avatar / WEIGHT_FILES["audio2expression"]))
    stats = corpus.stats()
    fields = manifest.model_dump(exclude={"format", "created_with", "files"})
    fields["name"] = "default"
    fields["audio_stats"] = stats.to_dict()
    fields["training"] = {
        **{k: v for k, v in manifest.training.items() if not k.startswith(("val_a2e", "steps_a2e"))},
        "recipe_seed": recipe.seed,
        "audio_corpus_utterances": corpus_settings.utterances,
        "audio_corpus_seconds": corpus_settings.utterances * corpus_settings.seconds,
        "steps_audio_corpus": corpus_settings.steps,
        "audio_corpus_loss": round(loss, 6),
        "opening_fit_explained": round(explained, 6),
    }
    write_manifest(avatar, fields)
    return explained, loss


def _write_provenance(avatar: Path, recipe: DefaultAvatarRecipe) -> None:
    lines = [
        "# The default avatar",
        "",
        "Made entirely by this project from a seed (`stableface build-default`), from free data only:",
        "",
        "- the face: scikit-image's `astronaut` portrait (Eileen Collins, a NASA photograph in the",
        "  public domain), animated by `offline_training.synthetic`;",
        "- the speech: the project's own generated voices (`offline_training.synthetic.speech`),",
        "  augmented (speaker, room, channel, noise) by `offline_training.default_avatar.speech_corpus`.",
        "",
        "No video or speech recording of anyone was used: the only real image is that public-domain",
        'portrait. The avatar\'s output carries an "AI-generated" mark by default.',
        "",
        "## Recipe",
        "",
        "```json",
        json.dumps(asdict(recipe), indent=2),
        "```",
        "",
    ]
    (avatar / PROVENANCE).write_text("\n".join(lines))


def _export_onnx(avatar: Path) -> None:
    """The ONNX graphs a live session of this avatar runs (its own chunk size), beside it."""
    from engines.backends import StreamShape
    from engines.backends.onnx_export import ensure_onnx_export, onnx_export_dir
    from engines.bundle import AvatarBundle

    bundle = AvatarBundle.load(avatar)
    shape = StreamShape.for_config(bundle.config)
    ensure_onnx_export(bundle.networks, shape, onnx_export_dir(avatar, shape))


def _replace(out: Path, avatar: Path) -> None:
    """Move the finished bundle's files to ``out``; the old ``out`` goes only after they are in."""
    with atomic_directory(out, replace=True) as staging:
        for entry in (*BUNDLE_ENTRIES, PROVENANCE, ONNX_EXPORTS):
            if (avatar / entry).exists():
                (avatar / entry).rename(staging / entry)
