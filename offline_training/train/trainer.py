"""``stableface train``: the two-stage schedule of the paper, checkpoints, validation, the bundle.

Stages: ``a2e`` (audio-to-expression), ``renderer`` (renderer + discriminator, face shapes as
they are), ``joint`` (renderer with adaptive smoothing, smoothing at a much smaller learning
rate). Validation uses the held-out tail of the video (never trained on). Checkpoints are written
every ``checkpoint_every`` steps and at the end of each stage; ``--resume`` continues from the
newest. Only rank 0 writes when several processes train under ``torchrun``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from engines import render_io
from engines.bundle import AvatarNetworks, build_networks
from engines.errors import InputError, OutputError
from engines.nets import PRESETS, ModelConfig
from offline_training.dataset import AvatarDataset
from offline_training.train.best_weights import BestWeights
from offline_training.train.budget import (
    MIN_RESERVE_S,
    RESERVE_MARGIN,
    BudgetClock,
    Clock,
    Plateau,
    StageWindow,
    StepTimer,
    format_seconds,
    lr_factor,
    stage_seconds,
)
from offline_training.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from offline_training.train.data import AudioWindows, RendererBatch, RendererSamples
from offline_training.train.discriminator import PatchDiscriminator
from offline_training.train.distributed import DistributedContext, unwrap
from offline_training.train.erosion import ErosionSettings
from offline_training.train.export import export_bundle
from offline_training.train.losses import (
    PerceptualLoss,
    discriminator_loss,
    generator_adversarial_loss,
    masked_l1,
    ssim,
)
from offline_training.train.metrics import mouth_landmark_distance
from offline_training.train.settings import Stage, TrainSettings, resolved_batch_size
from offline_training.train.voice_augmentation import MixedAudioWindows, make_variants

logger = logging.getLogger(__name__)

VALIDATION_SEQUENCES = 4
VALIDATION_WINDOWS = 8
DISCRIMINATOR_SIZES = {"paper": (64, 3), "small": (32, 3), "live": (16, 3), "mini": (16, 3), "tiny": (16, 2)}
# What each stage's best weights and plateau are judged by: (metric, higher is better).
STAGE_METRIC: dict[str, tuple[str, bool]] = {
    "a2e": ("val/a2e_l1", False),
    "renderer": ("val/ssim", True),
    "joint": ("val/ssim", True),
}
# Budgeted runs: the audio model validates every few steps (it peaks within a few hundred);
# the renderer about VALIDATIONS_PER_STAGE times over its planned time.
A2E_VAL_EVERY = 25
A2E_PATIENCE, A2E_MIN_DELTA = 8, 0.002
RENDER_PATIENCE, RENDER_MIN_DELTA, RENDER_MIN_FRACTION = 5, 0.0005, 0.4
VALIDATIONS_PER_STAGE = 15
# The final phase's cost before the renderer has been timed (seconds per frame, a 2-core CPU at
# 128 px), and the bundle export's (PNG crops and JPEG copies) per dataset frame.
RENDER_S_PER_FRAME, TRACK_S_PER_FRAME, EXPORT_S_PER_FRAME = 0.03, 0.03, 0.01
# The stability report's ratio intervals: 4 bootstraps (lips, jaw; two trackers), ~1.5 ms a frame each.
INTERVAL_S_PER_FRAME = 0.006


@dataclass
class TrainReport:
    """What a training run did."""

    out: Path
    steps: dict[str, int] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    resumed_at: tuple[str, int] | None = None


def model_config_for(settings: TrainSettings, mouth_dims: int) -> ModelConfig:
    """The preset, sized for the dataset's face model, with the ablation switches applied (a switch
    turns a part off; a part the preset leaves out stays out)."""
    if settings.preset not in PRESETS:
        raise InputError(f"unknown preset {settings.preset!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[settings.preset].with_mouth_dims(mouth_dims)
    renderer = config.renderer.model_copy(
        update={
            "use_audio_fusion": config.renderer.use_audio_fusion and settings.audio_fusion,
            "use_dependency": config.renderer.use_dependency and settings.dependency,
        }
    )
    return config.model_copy(
        update={
            "renderer": renderer,
            "use_smoothing": config.use_smoothing and settings.smoothing,
            "use_erosion_augmentation": config.use_erosion_augmentation and settings.erosion,
        }
    )


class Trainer:
    """Trains one avatar from one dataset."""

    def __init__(self, settings: TrainSettings, clock: Clock = time.monotonic, spent_s: float = 0.0) -> None:
        """``clock`` reads seconds (tests pass a virtual one); ``spent_s``: time already spent
        against the budget (the command line's start-up)."""
        self.clock = clock
        self.budget = (
            BudgetClock(settings.budget_s, spent_s, clock) if settings.budget_s is not None else None
        )
        self.settings = settings
        if settings.tracker_model is not None and not settings.tracker_model.is_file():
            raise InputError(f"--tracker-model {settings.tracker_model}: no such file")
        self.context = DistributedContext.from_environment(settings.device)
        self.device = self.context.device
        self.batch_size = resolved_batch_size(settings.batch_size, settings.preset, self.device.type)
        self.dataset = AvatarDataset.open(settings.dataset)
        self.config = model_config_for(settings, self.dataset.face_model.mouth_dims)
        torch.manual_seed(settings.seed)
        self.rng = np.random.default_rng(settings.seed + 1000 * self.context.rank)
        self.networks: AvatarNetworks = build_networks(self.config).to(self.device)
        self.networks.smoothing.set_form_preference(causal=False)
        base, layers = DISCRIMINATOR_SIZES.get(settings.preset, (32, 3))
        self.discriminator = PatchDiscriminator(base, layers).to(self.device)
        if self.device.type == "cuda":  # NHWC convolutions under bf16 autocast
            self.networks.renderer.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.discriminator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.perceptual = PerceptualLoss(settings.vgg_weights).to(self.device)
        split = self.dataset.split(settings.validation_fraction)
        size, length = self.config.renderer.image_size, self.config.sequence_length
        erosion = ErosionSettings() if self.config.use_erosion_augmentation else None
        augment = self.config.use_erosion_augmentation
        self.train_samples = RendererSamples(self.dataset, split.train, length, size, augment, erosion)
        self.val_samples = RendererSamples(self.dataset, split.validation, length, size, augment=False)
        window = min(settings.audio_window_frames, max(4, len(split.validation) // 2))
        self.train_audio: AudioWindows | MixedAudioWindows = AudioWindows(self.dataset, split.train, window)
        if settings.voice_augmentation and "a2e" in self._stages():
            variants = make_variants(self.dataset, split.train, window, settings.seed)
            self.train_audio = MixedAudioWindows(self.train_audio, variants)
        self.val_audio = AudioWindows(self.dataset, split.validation, window)
        std = torch.from_numpy(np.maximum(self.dataset.face_model.mouth_std, 1e-6))
        self.expression_weights = (std / std.mean()).to(self.device)
        self.training_dir = settings.out / "training"
        self.checkpoints = self.training_dir / "checkpoints"
        self.optimizers = self._optimizers()
        self.completed: list[Stage] = []
        self.stage_steps: dict[str, int] = {}
        self.writer: Any = None
        self.costs = _FinalPhaseCosts(tail_frames=len(split.validation), frames=len(self.dataset))
        self._validation_interval_s = 0.0
        self._compiled: dict[int, nn.Module] = {}

    def _stages(self) -> list[Stage]:
        """The stages to run: ``--stage all`` has no joint stage for a model without smoothing."""
        stages = self.settings.stages()
        if self.settings.stage == "all" and not self.config.use_smoothing:
            return [stage for stage in stages if stage != "joint"]
        return stages

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        nets, s = self.networks, self.settings
        return {
            "a2e": torch.optim.AdamW(nets.audio2expression.parameters(), lr=s.audio_lr, weight_decay=1e-4),
            "renderer": torch.optim.Adam(nets.renderer.parameters(), lr=s.renderer_lr, betas=(0.5, 0.999)),
            "discriminator": torch.optim.Adam(
                self.discriminator.parameters(), lr=s.renderer_lr, betas=(0.5, 0.999)
            ),
            "smoothing": torch.optim.Adam(nets.smoothing.parameters(), lr=s.smoothing_lr),
        }

    def _modules(self) -> dict[str, nn.Module]:
        return {
            "audio2expression": self.networks.audio2expression,
            "renderer": self.networks.renderer,
            "smoothing": self.networks.smoothing,
            "discriminator": self.discriminator,
        }

    def steps_for(self, stage: Stage) -> int:
        """Steps of a stage from --steps or --epochs (an epoch: every training sequence once)."""
        s = self.settings
        if s.steps is not None:
            base = s.steps
        else:
            epochs = s.epochs if s.epochs is not None else 1.0
            pool = self.train_audio.starts if stage == "a2e" else self.train_samples.starts
            base = max(1, math.ceil(epochs * len(pool) / (self.batch_size * self.context.world_size)))
        return max(1, base // 5) if stage == "joint" and s.stage == "all" else base

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # ---------------------------------------------------------------- steps

    def _a2e_step(self, model: nn.Module) -> dict[str, float]:
        audio, target = self.train_audio.batch(self.batch_size, self.rng)
        audio = audio.to(self.device) + 0.1 * torch.randn_like(audio, device=self.device)
        target = target.to(self.device)
        with self._autocast():
            prediction = model(audio).float()
        loss = _expression_loss(prediction, target, self.expression_weights)
        optimizer = self.optimizers["a2e"]
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return {"a2e/loss": float(loss.detach())}

    def _render(self, renderer: nn.Module, smoothing: nn.Module | None, batch: RendererBatch) -> Tensor:
        shapes = batch.shapes
        if smoothing is not None:
            shapes = smoothing(shapes, batch.params, causal=bool(self.rng.uniform() < 0.5))
        result: Tensor = renderer(batch.eroded, shapes, batch.audio)
        return result

    def _renderer_step(
        self, renderer: nn.Module, smoothing: nn.Module | None, discriminator: nn.Module
    ) -> dict[str, float]:
        s = self.settings
        batch = self.train_samples.batch(self.batch_size, self.rng).to(self.device)
        with self._autocast():
            prediction = self._render(renderer, smoothing, batch).float()
        flat_prediction, flat_target = prediction.flatten(0, 1), batch.target.flatten(0, 1)
        l1 = masked_l1(prediction, batch.target, batch.weights)
        perceptual = self.perceptual(flat_prediction, flat_target)
        plain_discriminator = unwrap(discriminator)
        adversarial = generator_adversarial_loss(plain_discriminator(flat_prediction))
        loss = s.lambda_rec * (l1 + perceptual) + s.lambda_adv * adversarial
        generator_optimizers = [self.optimizers["renderer"]] + (
            [self.optimizers["smoothing"]] if smoothing else []
        )
        for optimizer in generator_optimizers:
            optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        nn.utils.clip_grad_norm_(renderer.parameters(), 5.0)
        for optimizer in generator_optimizers:
            optimizer.step()
        # Discriminator (Eq. 6) on real and generated frames in one forward pass.
        d_optimizer = self.optimizers["discriminator"]
        d_optimizer.zero_grad(set_to_none=True)
        logits = discriminator(torch.cat([flat_target, flat_prediction.detach()]))
        real, fake = logits.chunk(2)
        d_loss = discriminator_loss(real, fake)
        torch.autograd.backward(d_loss)
        d_optimizer.step()
        return {
            "renderer/l1": float(l1.detach()),
            "renderer/perceptual": float(perceptual.detach()),
            "renderer/adversarial": float(adversarial.detach()),
            "renderer/total": float(loss.detach()),
            "discriminator/loss": float(d_loss.detach()),
        }

    # ---------------------------------------------------------------- validation

    @torch.no_grad()
    def validate(self, stage: Stage, step: int, final: bool = False) -> dict[str, float]:
        """Metrics on the held-out tail, and sample images under ``training/samples``.

        Renderer validations include the mouth-landmark distance (MediaPipe on rendered and true
        frames; left out with a warning where MediaPipe is not installed). ``final``: the last
        validation of the run.
        """
        nets = self.networks
        for module in (nets.audio2expression, nets.renderer, nets.smoothing):
            module.eval()
        metrics: dict[str, float] = {}
        starts = self.val_audio.starts[
            np.linspace(0, len(self.val_audio.starts) - 1, VALIDATION_WINDOWS).astype(int)
        ]
        audio, target = self.val_audio.windows(starts)
        prediction = nets.audio2expression(audio.to(self.device)).float().cpu()
        metrics["val/a2e_l1"] = float((prediction - target).abs().mean())
        if stage != "a2e":
            l1s: list[float] = []
            ssims: list[float] = []
            rows: list[np.ndarray[Any, Any]] = []
            rendered_frames: list[np.ndarray[Any, Any]] = []
            true_frames: list[np.ndarray[Any, Any]] = []
            render_started = self.clock()
            for start in self.val_samples.fixed(VALIDATION_SEQUENCES):
                batch = self.val_samples.sample(start, None).to(self.device)
                shapes = batch.shapes
                if stage == "joint":
                    shapes = nets.smoothing(shapes, batch.params)
                rendered = nets.renderer(batch.eroded, shapes, batch.audio).float()
                l1s.append(float((rendered - batch.target).abs().mean()))
                ssims.append(
                    float(ssim((rendered.flatten(0, 1) + 1) / 2, (batch.target.flatten(0, 1) + 1) / 2).mean())
                )
                rows.append(_sample_row(batch, shapes, rendered, len(rows)))
                rendered_frames += [_to_image(frame) for frame in rendered[0]]
                true_frames += [_to_image(frame) for frame in batch.target[0]]
            metrics["val/l1"] = float(np.mean(l1s))
            metrics["val/ssim"] = float(np.mean(ssims))
            self.costs.render_s_per_frame = (self.clock() - render_started) / len(rendered_frames)
            metrics.update(self._mouth_distance(rendered_frames, true_frames))
            samples = self.training_dir / "samples"
            samples.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(samples / f"{stage}-step{step:06d}.png"), np.concatenate(rows)[..., ::-1])
        for module in (nets.audio2expression, nets.renderer, nets.smoothing):
            module.train()
        return metrics

    def _mouth_distance(
        self, rendered: list[np.ndarray[Any, Any]], truth: list[np.ndarray[Any, Any]]
    ) -> dict[str, float]:
        if self.costs.no_tracker:
            return {}
        started = self.clock()
        try:
            distance, found = mouth_landmark_distance(rendered, truth)
        except ImportError as exc:  # MediaPipe missing: a training-only machine
            logger.warning("mouth-landmark distance skipped: %s", exc)
            self.costs.no_tracker = True
            return {}
        self.costs.track_s_per_frame = (self.clock() - started) / (2 * len(rendered))
        return {"val/mouth_landmark_distance": distance, "val/mouth_landmarks_found": found}

    # ---------------------------------------------------------------- bookkeeping

    def _log(self, values: dict[str, float], stage: Stage, step: int) -> None:
        if not self.context.is_main:
            return
        if self.writer is not None:
            global_step = sum(self.stage_steps.get(s, 0) for s in self.completed) + step
            for key, value in values.items():
                self.writer.add_scalar(key, value, global_step)
        line: dict[str, Any] = {"stage": stage, "step": step, **values}
        if self.budget is not None:
            line["elapsed_s"] = round(self.budget.elapsed(), 2)
        with (self.training_dir / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(line) + "\n")

    def _checkpoint(self, stage: Stage, step: int) -> None:
        if not self.context.is_main:
            return
        meta = {
            "stage": stage,
            "step": step,
            "completed": self.completed,
            "stage_steps": self.stage_steps,
            "rng": self.rng.bit_generator.state,
            "preset": self.settings.preset,
        }
        save_checkpoint(
            self.checkpoints / f"step-{len(self.completed)}-{step:08d}.safetensors",
            self._modules(),
            self.optimizers,
            meta,
        )
        for old in sorted(self.checkpoints.glob("step-*.safetensors"))[:-2]:
            old.unlink()

    def _prepare_output(self) -> tuple[Stage | None, int]:
        """Create or check the output folder; on resume, restore the newest checkpoint."""
        out = self.settings.out
        if self.settings.resume:
            found = latest_checkpoint(self.checkpoints)
            if found is None:
                raise InputError(f"--resume: no checkpoint in {self.checkpoints}")
            meta = load_checkpoint(found, self._modules(), self.optimizers)
            if meta.get("preset") != self.settings.preset:
                raise InputError(
                    f"{found}: trained with preset {meta.get('preset')!r}, not {self.settings.preset!r}"
                )
            self.completed = list(meta["completed"])
            self.stage_steps = dict(meta["stage_steps"])
            self.rng.bit_generator.state = meta["rng"]
            logger.info("resuming %s at step %d from %s", meta["stage"], meta["step"], found)
            return meta["stage"], int(meta["step"])
        if out.exists() and any(out.iterdir()):
            if not self.settings.overwrite:
                raise OutputError(
                    f"{out}: already exists; choose another --out, or pass --overwrite or --resume"
                )
            if self.context.is_main:
                shutil.rmtree(out)
        self.context.barrier()
        if self.context.is_main:
            try:
                self.checkpoints.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"{out}: cannot write there ({exc.strerror or exc})") from exc
        self.context.barrier()
        return None, 0

    def _open_writer(self) -> None:
        if not self.context.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("tensorboard is not installed: metrics go to training/metrics.jsonl only")
            return
        self.writer = SummaryWriter(str(self.training_dir / "logs"))

    # ---------------------------------------------------------------- run

    def _stage_modules(self, stage: Stage) -> tuple[nn.Module, nn.Module | None, nn.Module]:
        nets = self.networks

        def wrap(module: nn.Module) -> nn.Module:
            wrapped = self.context.wrap(module)
            if not self.settings.compile:
                return wrapped
            if id(module) not in self._compiled:
                self._compiled[id(module)] = torch.compile(wrapped)  # type: ignore[assignment]
            return self._compiled[id(module)]

        if stage == "a2e":
            return wrap(nets.audio2expression), None, self.discriminator
        smoothing = wrap(nets.smoothing) if stage == "joint" else None
        return wrap(nets.renderer), smoothing, wrap(self.discriminator)

    def _trained_modules(self, stage: Stage) -> dict[str, nn.Module]:
        """What a stage changes, by name: the weights its best validation keeps."""
        nets = self.networks
        if stage == "a2e":
            return {"audio2expression": nets.audio2expression}
        if stage == "renderer":
            return {"renderer": nets.renderer}
        return {"renderer": nets.renderer, "smoothing": nets.smoothing}

    def _stage_window(self, stage: Stage, stages_after: int) -> StageWindow:
        assert self.budget is not None
        left = self.budget.left() - self.costs.reserve_s(self.settings.stability_report)
        has_joint = "joint" in self._stages()
        return StageWindow(self.budget.elapsed(), stage_seconds(stage, left, stages_after, has_joint))

    def _set_learning_rates(self, stage: Stage, factor: float) -> None:
        s = self.settings
        base = {"a2e": s.audio_lr, "renderer": s.renderer_lr, "discriminator": s.renderer_lr}
        if stage == "joint":
            base["smoothing"] = s.smoothing_lr
        names = ["a2e"] if stage == "a2e" else [name for name in base if name != "a2e"]
        for name in names:
            for group in self.optimizers[name].param_groups:
                group["lr"] = base[name] * factor

    def _budget_step_plan(self, window: StageWindow, timer: StepTimer, stalled: bool) -> tuple[bool, float]:
        """(whether to take another step, the learning-rate factor), decided by the main process:
        a step is started only if the stage has not stalled and the step ends before the stage's
        planned end and before the final phase's reserve."""
        assert self.budget is not None
        elapsed = self.budget.elapsed()
        hard_end = self.budget.total_s - self.costs.reserve_s(self.settings.stability_report)
        fits = not stalled and elapsed + timer.mean_s <= min(window.end_s, hard_end)
        go, factor = self.context.from_main([float(fits), lr_factor(window.fraction(elapsed))])
        return go > 0.5, factor

    def _validation_due(self, stage: Stage, step: int, total: int | None, last_validation_s: float) -> bool:
        if self.budget is None:
            return step % self.settings.val_every == 0 or step == total
        if stage == "a2e":
            return step % A2E_VAL_EVERY == 0
        return self.clock() - last_validation_s >= self._validation_interval_s

    def _run_stage(self, stage: Stage, first_step: int, stages_after: int = 0) -> None:
        """Train one stage: a fixed number of steps, or (``--budget``) until its time is up or its
        validation metric stops improving; it ends with the weights of its best validation."""
        total = None if self.budget is not None else self.steps_for(stage)
        window = self._stage_window(stage, stages_after) if self.budget is not None else None
        if window is not None:
            self._validation_interval_s = window.planned_s / VALIDATIONS_PER_STAGE
        model, smoothing, discriminator = self._stage_modules(stage)
        for module in (
            self.networks.audio2expression,
            self.networks.renderer,
            self.networks.smoothing,
            self.discriminator,
        ):
            module.train()
        metric, higher = STAGE_METRIC[stage]
        best = BestWeights(self._trained_modules(stage), higher)
        plateau = (
            Plateau(A2E_PATIENCE, higher, A2E_MIN_DELTA)
            if stage == "a2e"
            else Plateau(RENDER_PATIENCE, higher, RENDER_MIN_DELTA, RENDER_MIN_FRACTION)
        )
        timer = StepTimer()
        bar = tqdm(
            total=total,
            initial=first_step,
            desc=stage,
            unit="step",
            disable=not (self.settings.show_progress and self.context.is_main),
        )
        step, validated_at, last_validation_s = first_step, -1, self.clock()
        stop_on_plateau = False
        with bar:
            while True:
                if window is not None:
                    go, factor = self._budget_step_plan(window, timer, stop_on_plateau)
                    if not go:
                        break
                    self._set_learning_rates(stage, factor)
                elif total is not None and step >= total:
                    break
                step += 1
                started = self.clock()
                if stage == "a2e":
                    values = self._a2e_step(model)
                else:
                    values = self._renderer_step(model, smoothing, discriminator)
                timer.add(self.clock() - started)
                bar.update(1)
                bar.set_postfix(
                    {k.split("/")[-1]: f"{v:.3f}" for k, v in values.items() if "total" in k or "a2e" in k}
                )
                if step % 10 == 0 or step == total:
                    self._log(values, stage, step)
                if self.context.is_main and self._validation_due(stage, step, total, last_validation_s):
                    self._validate_during(stage, step, best, plateau, window, timer, bar)
                    validated_at, last_validation_s = step, self.clock()
                    if window is not None and self.budget is not None:
                        stop_on_plateau = plateau.stalled(window.fraction(self.budget.elapsed()))
                if step % self.settings.checkpoint_every == 0 and (total is None or step < total):
                    self._checkpoint(stage, step)
        if self.context.is_main and validated_at != step and step > first_step:
            self._validate_during(stage, step, best, plateau, window, timer, bar)
        if stop_on_plateau:
            self._say(
                f"{stage}: stopped at step {step}: {metric} has not improved "
                f"for {plateau.patience} validations"
            )
        if best.restore(step):
            self._say(f"{stage}: kept the weights of step {best.step} ({metric} {best.value:.4f})")
            self._log({f"{metric}_kept": best.value, "kept_step": float(best.step)}, stage, step)
        self.stage_steps[stage] = step
        if stage not in self.completed:
            self.completed.append(stage)
        self._checkpoint(stage, step)

    def _validate_during(
        self,
        stage: Stage,
        step: int,
        best: BestWeights,
        plateau: Plateau,
        window: StageWindow | None,
        timer: StepTimer,
        bar: Any,
    ) -> None:
        """Validate, keep the best weights, count towards the plateau, report progress."""
        started = self.clock()
        metrics = self.validate(stage, step)
        self.costs.validation_s = self.clock() - started
        self._log(metrics, stage, step)
        value = metrics[STAGE_METRIC[stage][0]]
        best.offer(step, value)
        plateau.update(value)
        shown = self.settings.show_progress and (stage != "a2e" or step % (A2E_VAL_EVERY * 8) == 0)
        if shown:
            bar.write(self._progress_line(stage, step, metrics, window, timer), file=sys.stderr)

    def _progress_line(
        self, stage: Stage, step: int, metrics: dict[str, float], window: StageWindow | None, timer: StepTimer
    ) -> str:
        shown = {"val/a2e_l1": "a2e L1", "val/ssim": "SSIM", "val/mouth_landmark_distance": "mouth"}
        parts = [
            f"{label} {metrics[key]:.4f}" if math.isfinite(metrics[key]) else f"{label} —"
            for key, label in shown.items()
            if key in metrics
        ]
        if window is not None and self.budget is not None:
            left = self.budget.left()
            done = f"{window.fraction(self.budget.elapsed()):.0%} of its time"
        else:
            total = self.stage_steps.get(stage) or self.steps_for(stage)
            left = max(0, total - step) * timer.mean_s
            done = f"{step}/{total}"
        ends = (datetime.now() + timedelta(seconds=left)).strftime("%H:%M")
        scope = "run" if window is not None else "stage"
        return (
            f"{stage} step {step} ({done}): {', '.join(parts)} · "
            f"{scope} ends in {format_seconds(left)} (≈ {ends})"
        )

    def _say(self, text: str) -> None:
        logger.info(text)
        if self.settings.show_progress and self.context.is_main:
            tqdm.write(text, file=sys.stderr)

    def _final_report(self) -> dict[str, float]:
        """The last validation and the held-out tail's stability, printed and returned."""
        stage = self.completed[-1]
        final = self.validate(stage, self.stage_steps[stage], final=True)
        self._say("validation: " + ", ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in final.items()))
        return final

    def _stability(self) -> dict[str, float]:
        """MSI of the rendered and real held-out tail (lips and jaw, every tracker), after export."""
        if not self.settings.stability_report or "renderer" not in self.completed:
            return {}
        from offline_training.evaluation.tail_stability import tail_stability

        trackers = []
        try:
            from engines.geometry.trackers import create_tracker

            trackers.append(create_tracker("mediapipe"))
            if self.settings.tracker_model is not None:
                trackers.append(create_tracker("onnx68", self.settings.tracker_model))
            results = tail_stability(self.settings.out, self.dataset, trackers, str(self.device))
        except (ImportError, InputError) as exc:
            logger.warning("held-out tail stability not measured: %s", exc)
            self._say(f"held-out tail stability not measured: {exc}")
            return {}
        finally:
            for tracker in trackers:
                tracker.close()
        metrics: dict[str, float] = {}
        for result in results:
            for line in result.lines():
                self._say(line)
            metrics.update(result.metrics())
        return metrics

    def run(self) -> TrainReport:
        """Train every requested stage, then export the avatar bundle into ``out``."""
        started = time.perf_counter()
        resume_stage, resume_step = self._prepare_output()
        self._open_writer()
        try:
            stages = [
                stage
                for stage in self._stages()
                # --stage all skips finished stages; a stage named explicitly is trained (again).
                if not (stage in self.completed and self.settings.stage == "all")
            ]
            for index, stage in enumerate(stages):
                continuing = stage == resume_stage and stage not in self.completed
                self._run_stage(stage, resume_step if continuing else 0, len(stages) - index - 1)
            final = self._final_report() if self.context.is_main else {}
            if self.context.is_main:
                export_bundle(
                    self.settings.out,
                    self.dataset,
                    self.config,
                    self.networks,
                    final,
                    self.stage_steps,
                    self.settings.reference_frames,
                )
                final.update(self._stability())
                self._log(final, self.completed[-1], self.stage_steps[self.completed[-1]])
                report: dict[str, Any] = {
                    "validation": final,
                    "steps": self.stage_steps,
                    "voice_augmentation": isinstance(self.train_audio, MixedAudioWindows),
                }
                if self.budget is not None:
                    report["budget_s"] = self.budget.total_s
                    report["elapsed_s"] = self.budget.elapsed()
                (self.training_dir / "report.json").write_text(json.dumps(report, indent=2))
            self.context.barrier()
        finally:
            if self.writer is not None:
                self.writer.close()
            self.context.close()
        resumed = (resume_stage, resume_step) if resume_stage is not None else None
        return TrainReport(
            self.settings.out, dict(self.stage_steps), final, time.perf_counter() - started, resumed
        )


@dataclass
class _FinalPhaseCosts:
    """What the run's last phase (final validation, bundle export, tail stability) will take,
    from the costs measured so far; a budgeted run stops training early enough for it."""

    tail_frames: int
    frames: int
    validation_s: float = 0.0
    render_s_per_frame: float = RENDER_S_PER_FRAME
    track_s_per_frame: float = TRACK_S_PER_FRAME
    no_tracker: bool = False

    def reserve_s(self, stability_report: bool) -> float:
        # The last stage's closing validation and the final one, then the export.
        estimate = 2 * self.validation_s + self.frames * EXPORT_S_PER_FRAME
        if stability_report:
            estimate += 1.0 + self.tail_frames * (
                self.render_s_per_frame + 2 * self.track_s_per_frame + INTERVAL_S_PER_FRAME
            )
        return max(MIN_RESERVE_S, RESERVE_MARGIN * estimate)


def _expression_loss(prediction: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """L1 on parameters plus L1 on their frame-to-frame velocity (keeps motion smooth).

    Parameters are in units of their std; ``weights`` (Em,) give each its share of the motion
    (std over mean std), so the large components (jaw, lip opening) dominate the loss rather than
    the small ones that are mostly tracker noise and cannot be predicted from audio.
    """
    error = (prediction - target) * weights
    velocity = error[:, 1:] - error[:, :-1]
    return error.abs().mean() + 0.5 * velocity.abs().mean()


def _to_image(tensor: Tensor) -> np.ndarray[Any, Any]:
    """(3, S, S) tensor in [-1, 1] → (S, S, 3) uint8 image."""
    return render_io.to_image(tensor.detach().float().cpu().numpy())


def _sample_row(batch: RendererBatch, shapes: Tensor, rendered: Tensor, index: int) -> np.ndarray[Any, Any]:
    """One validation sample: eroded input | face shape | rendered | ground truth, middle frame."""
    t = batch.eroded.shape[1] // 2
    shape = _to_image(shapes[0, t, :3] * 2 - 1)
    return np.concatenate(
        [_to_image(batch.eroded[0, t]), shape, _to_image(rendered[0, t]), _to_image(batch.target[0, t])],
        axis=1,
    )
