"""Adaptive smoothing of face-shape images (paper Table I and Eq. 1).

Per-frame mouth parameters (B, T, E) go through 4 x Conv1D-BN-ReLU (32, 32, 16, 16) and a
Conv1D-Sigmoid to K weights per frame, normalised to sum to 1; the smoothed face shape of frame
t is the weighted sum of the K face shapes around t. Two forms share the weights:

- *centred* (offline): frames t-(K-1)/2 .. t+(K-1)/2, symmetric padding;
- *causal* (streaming): frames t+L-K+1 .. t+L with L the look-ahead, left-padded convolutions,
  so nothing after t+L influences frame t.

Sequence ends repeat the first or last frame. The last layer starts biased to the centre frame
(or, causal, frame t), so switching smoothing on leaves a trained renderer's input nearly as it
was and the module learns how much to smooth.
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.nets.config import SmoothingConfig

INITIAL_PREFERENCE = 3.0


class _Conv(nn.Module):
    def __init__(self, inputs: int, outputs: int, kernel: int, norm: bool) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(inputs, outputs, kernel)
        self.norm = nn.BatchNorm1d(outputs) if norm else None

    def forward(self, x: Tensor, causal: bool) -> Tensor:
        pad = (self.kernel - 1, 0) if causal else ((self.kernel - 1) // 2, self.kernel // 2)
        x = self.conv(F.pad(x, pad, mode="replicate"))
        return F.relu(self.norm(x)) if self.norm is not None else x


class AdaptiveSmoothing(nn.Module):
    """Learns per-frame smoothing weights from mouth parameters and applies them to face shapes.

    ``lookahead_frames`` is the causal form's L, the audio model's look-ahead
    (``AudioToExpressionConfig.lookahead_frames``): the frames after t that are known when t is shown.
    """

    def __init__(self, config: SmoothingConfig, param_dims: int, lookahead_frames: int) -> None:
        super().__init__()
        if config.width % 2 == 0:
            raise ValueError(f"smoothing width K must be odd, got {config.width}")
        if lookahead_frames < 0:
            raise ValueError(f"look-ahead must be >= 0 frames, got {lookahead_frames}")
        self.config = config
        self.lookahead_frames = lookahead_frames
        widths = (param_dims, *config.channels)
        self.layers = nn.ModuleList(
            _Conv(a, b, config.kernel_size, norm=True) for a, b in itertools.pairwise(widths)
        )
        self.head = _Conv(widths[-1], config.width, config.kernel_size, norm=False)
        self._init_head()

    def _head_bias(self) -> Tensor:
        bias = self.head.conv.bias
        assert bias is not None
        return bias

    def _init_head(self) -> None:
        with torch.no_grad():
            self.head.conv.weight.mul_(0.1)
            self._head_bias().fill_(-INITIAL_PREFERENCE)

    def set_form_preference(self, causal: bool) -> None:
        """Bias the initial weights towards frame t for the given form (call before training)."""
        k, lookahead = self.config.width, self.lookahead_frames
        centre = (k - 1) // 2 if not causal else k - 1 - min(lookahead, k - 1)
        with torch.no_grad():
            self._head_bias().fill_(-INITIAL_PREFERENCE)
            self._head_bias()[centre] = INITIAL_PREFERENCE

    def offsets(self, causal: bool) -> list[int]:
        """Frame offsets of the K taps: centred -(K-1)/2..(K-1)/2, causal L-K+1..L."""
        k = self.config.width
        if causal:
            last = self.lookahead_frames
            return list(range(last - k + 1, last + 1))
        return list(range(-(k - 1) // 2, (k - 1) // 2 + 1))

    def weights(self, params: Tensor, causal: bool = False) -> Tensor:
        """(B, T, E) mouth parameters → (B, T, K) weights summing to 1 over K."""
        x = params.transpose(1, 2)
        for layer in self.layers:
            x = layer(x, causal)
        raw = torch.sigmoid(self.head(x, causal)).transpose(1, 2)
        if causal and self.lookahead_frames:
            # The weights of frame t are computed at t + L, which has seen frames up to t + L.
            frames = raw.shape[1]
            index = torch.clamp(
                torch.arange(frames, device=raw.device) + self.lookahead_frames, max=frames - 1
            )
            raw = raw[:, index]
        return raw / raw.sum(-1, keepdim=True).clamp_min(1e-6)

    def forward(self, shapes: Tensor, params: Tensor, causal: bool = False) -> Tensor:
        """Smooth face shapes (Eq. 1).

        Args:
            shapes: (B, T, C, H, W) face-shape images.
            params: (B, T, E) mouth parameters of the same frames.
            causal: use the causal form.

        Returns:
            (B, T, C, H, W) smoothed face shapes.
        """
        weights = self.weights(params, causal)
        frames = shapes.shape[1]
        time = torch.arange(frames, device=shapes.device)
        smoothed = torch.zeros_like(shapes)
        for tap, offset in enumerate(self.offsets(causal)):
            source = torch.clamp(time + offset, 0, frames - 1)
            smoothed = smoothed + weights[:, :, tap, None, None, None] * shapes[:, source]
        return smoothed


def apply_smoothing_weights(
    shapes: npt.NDArray[np.float32], weights: npt.NDArray[np.float32], offsets: list[int]
) -> npt.NDArray[np.float32]:
    """Eq. 1 with given weights, in numpy: what ``AdaptiveSmoothing.forward`` does after ``weights``.

    Backends compute only the (small) weights; the weighted sum of face shapes happens here, so
    the face-shape images never travel through an inference engine.

    Args:
        shapes: (B, T, C, H, W) face-shape images.
        weights: (B, T, K) weights of the K taps, summing to 1.
        offsets: the K frame offsets of the taps (``AdaptiveSmoothing.offsets``).

    Returns:
        (B, T, C, H, W) smoothed face shapes; taps before the first or after the last frame
        repeat the edge frame.
    """
    frames = shapes.shape[1]
    time = np.arange(frames)
    smoothed = np.zeros_like(shapes)
    for tap, offset in enumerate(offsets):
        source = np.clip(time + offset, 0, frames - 1)
        smoothed += weights[:, :, tap, None, None, None] * shapes[:, source]
    return smoothed
