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

from engines.audio.features import log_mel_for_video, normalise, utterance_stats
from engines.bundle import AvatarBundle
from engines.geometry.crop import paste_back
from engines.geometry.layouts import anchors_for
from engines.geometry.masks import paste_mask
from engines.geometry.raster import rasterize_face_shape

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
    fps: float = 25.0,
    reference_index: npt.NDArray[np.int64] | None = None,
) -> RenderPlan:
    """Predict the mouth for every video frame of ``audio`` (16 kHz mono, (S,) float32).

    ``reference_index`` (T,) names the reference frame under each output frame (default: the
    reference video played ping-pong); evaluation uses it to re-render a stretch of the reference.
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
    params = normalised * np.maximum(bundle.face_model.mouth_std, 1e-6)[None]
    return RenderPlan(
        reference_index=np.asarray(reference_index, dtype=np.int64),
        mouth_params=params.astype(np.float32),
        normalised_params=normalised.astype(np.float32),
        audio=per_frame.astype(np.float32),
    )


def face_shapes(bundle: AvatarBundle, plan: RenderPlan) -> npt.NDArray[np.float32]:
    """(T, 4, S, S) face shapes: predicted mouth, reference upper face and head pose."""
    reference, model = bundle.reference, bundle.face_model
    index = plan.reference_index
    posed = reference.pose.select(index).apply(model.shapes(plan.mouth_params, reference.upper_params[index]))
    size = bundle.config.renderer.image_size
    ring = anchors_for(model.layout).inner_lip_ring
    box = bundle.crop_box
    shapes = [
        rasterize_face_shape(box.to_crop_points(points, size), model.triangles, model.vertex_code, ring, size)
        for points in posed
    ]
    return np.stack(shapes).transpose(0, 3, 1, 2).astype(np.float32)


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
) -> Iterator[ImageRGB]:
    """Render ``audio`` with the avatar, frame by frame, in order.

    Args:
        bundle: a loaded avatar.
        audio: (S,) float32 16 kHz mono speech.
        paste: paste the crop back into the full reference frame (else yield the crop).
        progress: called with the number of frames finished after each window.
        reference_index: (T,) reference frame under each output frame (default ping-pong).

    Yields:
        (H, W, 3) uint8 RGB frames at the avatar's fps.
    """
    plan = plan_render(bundle, audio, bundle.manifest.fps, reference_index)
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
        indices = plan.reference_index[start:end]
        eroded, masks = [], []
        for index in indices:
            crop = reference.crop(int(index)).copy()
            mask = reference.mouth_mask(int(index))
            crop[mask > 0] = 127
            masks.append(mask)
            eroded.append(torch.from_numpy(crop).permute(2, 0, 1).float() / 127.5 - 1)
        rendered = nets.renderer(
            torch.stack(eroded)[None].to(device),
            shapes[None, start:end].to(device),
            audio_features[None, start:end].to(device),
        )[0]
        images = (
            ((rendered.float().cpu().permute(0, 2, 3, 1).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
        )
        for offset in range(keep_from - start, keep_to - start):
            image = images[offset]
            if paste:
                weights = paste_mask(masks[offset])
                image = paste_back(
                    reference.full_frame(int(indices[offset])), image, bundle.crop_box, weights
                )
            yield image
        if progress is not None:
            progress(keep_to - keep_from)
