"""Rendering a whole audio file with an avatar (``stableface render``): the offline path.

audio → log-mel (normalised over the utterance) → audio-to-expression → mouth parameters →
face shapes posed like the reference frames (played ping-pong) → centred adaptive smoothing →
renderer over overlapping windows (full attention inside a window; each output frame is taken
from the window where it sits in the middle half) → paste-back into the full reference frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from engines import render_io
from engines.ai_mark import apply_ai_mark
from engines.audio.features import log_mel_for_video, normalise, utterance_stats
from engines.bundle import AvatarBundle
from engines.timebase import FPS

logger = logging.getLogger(__name__)

ImageRGB = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class RenderPlan:
    """Per output frame: reference frame, mouth parameters (raw and normalised), audio features.

    Attributes:
        reference_index: (T,) reference frame played at each output frame.
        mouth_params: (T, Em) predicted parameters in face-model units.
        normalised_params: (T, Em) the same over each parameter's std (network units).
        audio: (T, A) per-frame audio features.
    """

    reference_index: npt.NDArray[np.int64]
    mouth_params: npt.NDArray[np.float32]
    normalised_params: npt.NDArray[np.float32]
    audio: npt.NDArray[np.float32]


@torch.no_grad()
def plan_render(
    bundle: AvatarBundle,
    audio: npt.NDArray[np.float32],
    fps: float = FPS,
    reference_index: npt.NDArray[np.int64] | None = None,
    mouth_params: npt.NDArray[np.float32] | None = None,
) -> RenderPlan:
    """Predict the mouth for every video frame of ``audio`` (16 kHz mono, (S,) float32).

    ``reference_index`` (T,) names the reference frame under each output frame (default: the
    reference video played ping-pong); evaluation uses it to re-render a stretch of the reference.
    ``mouth_params`` (T, Em), in face-model units, replace the audio model's prediction
    (evaluation drives the renderer with the tracked mouth to tell the renderer's part from the
    audio model's); the audio still feeds the renderer's audio fusion.
    """
    frames = max(1, int(np.ceil(len(audio) * fps / bundle.manifest.sample_rate_hz)))
    if reference_index is None:
        reference_index = bundle.reference.ping_pong(frames)
    elif len(reference_index) != frames:
        raise ValueError(f"reference_index has {len(reference_index)} frames; the audio needs {frames}")
    features = log_mel_for_video(audio, frames, fps)
    features = normalise(features, utterance_stats(features))
    per_frame = features.reshape(frames, -1)
    device = next(bundle.networks.audio2expression.parameters()).device
    normalised = (
        bundle.networks.audio2expression(torch.from_numpy(per_frame)[None].to(device))[0]
        .float()
        .cpu()
        .numpy()
    )
    std = np.maximum(bundle.face_model.mouth_std, 1e-6)[None]
    params = normalised * std
    if mouth_params is not None:
        if mouth_params.shape != params.shape:
            raise ValueError(f"mouth_params have shape {mouth_params.shape}; the audio needs {params.shape}")
        params, normalised = mouth_params, mouth_params / std
    return RenderPlan(
        reference_index=np.asarray(reference_index, dtype=np.int64),
        mouth_params=params.astype(np.float32),
        normalised_params=normalised.astype(np.float32),
        audio=per_frame.astype(np.float32),
    )


def face_shapes(bundle: AvatarBundle, plan: RenderPlan) -> npt.NDArray[np.float32]:
    """(T, 4, S, S) face shapes: predicted mouth, reference upper face and head pose."""
    reference, index = bundle.reference, plan.reference_index
    return render_io.face_shapes(
        bundle.face_model,
        bundle.crop_box,
        bundle.config.renderer.image_size,
        reference.pose.select(index),
        plan.mouth_params,
        reference.upper_params[index],
    )


def _window_spans(frames: int, window: int) -> Iterator[tuple[int, int, int, int]]:
    """(start, end, keep_from, keep_to) windows of ``window`` frames at stride window // 2."""
    if frames <= window:
        yield 0, frames, 0, frames
        return
    stride = max(1, window // 2)
    margin = (window - stride) // 2
    start, emitted = 0, 0
    while True:
        end = min(start + window, frames)
        start = end - window
        keep_to = frames if end == frames else start + margin + stride
        yield start, end, emitted, keep_to
        if end == frames:
            return
        emitted = keep_to
        start += stride


@torch.no_grad()
def render_frames(
    bundle: AvatarBundle,
    audio: npt.NDArray[np.float32],
    paste: bool = True,
    progress: Callable[[int], None] | None = None,
    reference_index: npt.NDArray[np.int64] | None = None,
    ai_mark: bool = False,
    mouth_params: npt.NDArray[np.float32] | None = None,
) -> Iterator[ImageRGB]:
    """Render ``audio`` with the avatar, frame by frame, in order.

    Args:
        bundle: a loaded avatar.
        audio: (S,) float32 16 kHz mono speech.
        paste: paste the crop back into the full reference frame (else yield the crop).
        progress: called with the number of frames finished after each window.
        reference_index: (T,) reference frame under each output frame (default ping-pong).
        ai_mark: draw the "AI-generated" mark on every frame.
        mouth_params: (T, Em) mouth to draw instead of the audio model's (see :func:`plan_render`).

    Yields:
        (H, W, 3) uint8 RGB frames at the avatar's fps.
    """
    plan = plan_render(bundle, audio, bundle.manifest.fps, reference_index, mouth_params)
    frames = len(plan.reference_index)
    nets = bundle.networks
    device = next(nets.renderer.parameters()).device
    shapes = torch.from_numpy(face_shapes(bundle, plan))
    params = torch.from_numpy(plan.normalised_params)
    if bundle.config.use_smoothing:
        shapes = nets.smoothing(shapes[None].to(device), params[None].to(device), causal=False)[0].cpu()
    reference = bundle.reference
    audio_features = torch.from_numpy(plan.audio)
    for start, end, keep_from, keep_to in _window_spans(frames, bundle.config.sequence_length):
        indices = [int(index) for index in plan.reference_index[start:end]]
        masks = [reference.mouth_mask(index) for index in indices]
        eroded = np.stack(
            [render_io.eroded_input(reference.crop(i), m) for i, m in zip(indices, masks, strict=True)]
        )
        rendered = (
            nets.renderer(
                torch.from_numpy(eroded)[None].to(device),
                shapes[None, start:end].to(device),
                audio_features[None, start:end].to(device),
            )[0]
            .float()
            .cpu()
            .numpy()
        )
        for offset in range(keep_from - start, keep_to - start):
            if paste:
                weights = render_io.paste_weights(masks[offset])
                full = reference.full_frame(indices[offset])
                yield render_io.paste_rendered(full, rendered[offset], bundle.crop_box, weights, ai_mark)
            else:
                image = render_io.to_image(rendered[offset])
                yield apply_ai_mark(image) if ai_mark else image
        if progress is not None:
            progress(keep_to - keep_from)
