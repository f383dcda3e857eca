"""The three streaming computations as ``torch.nn`` modules of fixed shape.

The torch backend runs these modules and the ONNX export traces the very same ones, so every
engine computes exactly one definition of a chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engines.backends.base import StreamShape
from engines.nets import AdaptiveSmoothing, AudioToExpression, Renderer
from engines.nets.attention import block_causal_mask


class RendererChunk(nn.Module):
    """One streaming renderer call: encode the C new frames, mix them with the P cached past
    frames under the block-causal mask, decode only the new ones.

    Equal to ``Renderer.forward`` over the P + C window with ``block_causal_mask(P + C, C)``,
    restricted to its last C frames.
    """

    mask: Tensor

    def __init__(self, renderer: Renderer, shape: StreamShape) -> None:
        super().__init__()
        self.renderer = renderer
        self.chunk = shape.chunk_frames
        self.past = shape.past_frames
        mask = block_causal_mask(shape.window_frames, shape.chunk_frames, renderer.tokens_per_frame)
        self.register_buffer("mask", mask, persistent=False)

    def forward(
        self, past_features: Tensor, eroded: Tensor, shapes: Tensor, audio: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Render a chunk.

        Args:
            past_features: (B, P, F, h, h) encoded features of the past frames.
            eroded: (B, C, 3, S, S) eroded reference crops in [-1, 1].
            shapes: (B, C, 4, S, S) smoothed face shapes in [0, 1].
            audio: (B, C, A) per-frame audio features.

        Returns:
            frames (B, C, 3, S, S) in [-1, 1] and features (B, C, F, h, h) of the new frames.
        """
        batch = eroded.shape[0]
        new = self.renderer.encode(eroded.flatten(0, 1), shapes.flatten(0, 1), audio.flatten(0, 1))
        new = new.reshape(batch, self.chunk, *new.shape[1:])
        window = torch.cat([past_features, new], dim=1) if self.past else new
        mixed = self.renderer.mix(window, self.mask, last_frames=self.chunk)
        frames = self.renderer.decode(mixed.flatten(0, 1))
        return frames.reshape(batch, self.chunk, *frames.shape[1:]), new


class Expressions(nn.Module):
    """Audio-to-expression over a fixed window: (B, T, A) → (B, T, Em)."""

    def __init__(self, model: AudioToExpression) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio: Tensor) -> Tensor:
        result: Tensor = self.model(audio)
        return result


class CausalSmoothingWeights(nn.Module):
    """The causal adaptive-smoothing weights: (B, T, Em) mouth parameters → (B, T, K)."""

    def __init__(self, smoothing: AdaptiveSmoothing) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, mouth: Tensor) -> Tensor:
        return self.smoothing.weights(mouth, causal=True)
