"""The StableFace renderer (paper section III-A and III-C3, Fig. 3).

encoder (conv 7x7 s1, two conv 4x4 s2; instance norm + leaky ReLU) → residual blocks →
audio fusion (each frame's audio features scale and shift its feature map) → dependency
modelling (each frame's map cut into p x p patches, flattened, projected to d, N transformer
blocks with spatio-temporal self-attention over all T·p² tokens, projected back and reassembled,
added to the input map) → decoder (two transposed conv 4x4 s2, conv 7x7, tanh).

Input per frame: the eroded reference frame (3 channels, [-1, 1]) and the smoothed face shape
(4 channels, [0, 1]); output: the frame, (3, S, S) in [-1, 1]. The encoder and decoder work on
frames one by one, so streaming can cache encoded past frames and decode only new ones; the
dependency module is the only place frames meet.

Outside training, ``decode`` also applies the configured output sharpening
(``RendererConfig.output_sharpening``): one fixed depthwise 5x5 convolution, so every path that
renders (streaming, offline render, the exports) draws the same frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.nets.attention import TransformerBlock, sinusoidal_positions
from engines.nets.config import RendererConfig

SHARPEN_RADIUS = 2
SHARPEN_SIGMA_PX = 0.7


def sharpen_kernel(amount: float) -> Tensor:
    """(3, 1, 5, 5) depthwise kernel of an unsharp mask: (1 + amount)·x − amount·gauss(x), with a
    Gaussian of σ = 0.7 px truncated at 2 px and normalised to sum 1 (the kernel sums to 1 too)."""
    offsets = torch.arange(-SHARPEN_RADIUS, SHARPEN_RADIUS + 1, dtype=torch.float64)
    line = torch.exp(-(offsets**2) / (2 * SHARPEN_SIGMA_PX**2))
    gauss = torch.outer(line, line)
    gauss /= gauss.sum()
    identity = torch.zeros_like(gauss)
    identity[SHARPEN_RADIUS, SHARPEN_RADIUS] = 1.0
    kernel = (1 + amount) * identity - amount * gauss
    return kernel.to(torch.float32).expand(3, 1, -1, -1).contiguous()


def _conv_block(inputs: int, outputs: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, kernel, stride, padding=(kernel - stride + 1) // 2),
        nn.InstanceNorm2d(outputs, affine=True),
        nn.LeakyReLU(0.2, inplace=True),
    )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.InstanceNorm2d(channels, affine=True),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = x + self.body(x)
        return result


class AudioFusion(nn.Module):
    """Per-frame audio features → per-channel scale and shift of that frame's feature map."""

    def __init__(self, audio_dim: int, channels: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(audio_dim, 2 * channels), nn.LeakyReLU(0.2), nn.Linear(2 * channels, 2 * channels)
        )
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, features: Tensor, audio: Tensor) -> Tensor:
        """(N, C, h, w) features and (N, A) audio → (N, C, h, w)."""
        scale, shift = self.mlp(audio).chunk(2, dim=-1)
        result: Tensor = features * (1 + scale[..., None, None]) + shift[..., None, None]
        return result


class DependencyModule(nn.Module):
    """Spatio-temporal transformer over the p x p patches of every frame in a window."""

    def __init__(self, channels: int, feature_size: int, config: RendererConfig) -> None:
        super().__init__()
        p = config.patch_grid
        if feature_size % p:
            raise ValueError(f"feature map side {feature_size} is not divisible by the patch grid {p}")
        self.grid = p
        self.patch = feature_size // p
        patch_dim = channels * self.patch * self.patch
        self.embed = nn.Linear(patch_dim, config.token_dim)
        self.spatial = nn.Parameter(0.02 * torch.randn(p * p, config.token_dim))
        self.blocks = nn.ModuleList(
            TransformerBlock(config.token_dim, config.heads, config.mlp_ratio)
            for _ in range(config.transformer_blocks)
        )
        self.norm = nn.LayerNorm(config.token_dim)
        self.unembed = nn.Linear(config.token_dim, patch_dim)
        nn.init.zeros_(self.unembed.weight)
        nn.init.zeros_(self.unembed.bias)

    def forward(self, features: Tensor, mask: Tensor | None = None, last_frames: int | None = None) -> Tensor:
        """Mix the frames of a window.

        Args:
            features: (B, T, C, h, w) feature maps of the window's frames, oldest first.
            mask: optional (T·p², T·p²) bool attention mask, True = may attend.
            last_frames: F, return only the newest F frames (streaming decodes only new frames,
                so the output projection of the others is skipped).

        Returns:
            (B, F, C, h, w), F = T unless ``last_frames`` is given.
        """
        batch, frames, channels, height, width = features.shape
        kept = frames if last_frames is None else last_frames
        p, s = self.grid, self.patch
        patches = features.reshape(batch, frames, channels, p, s, p, s).permute(0, 1, 3, 5, 2, 4, 6)
        tokens = self.embed(patches.reshape(batch, frames * p * p, channels * s * s))
        time_codes = sinusoidal_positions(frames, tokens.shape[-1], features.device)
        positions = (time_codes[:, None, :] + self.spatial[None]).reshape(frames * p * p, -1)
        tokens = tokens + positions.to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens, mask)
        tokens = tokens[:, (frames - kept) * p * p :]
        delta = self.unembed(self.norm(tokens)).reshape(batch, kept, p, p, channels, s, s)
        delta = delta.permute(0, 1, 4, 2, 5, 3, 6).reshape(batch, kept, channels, height, width)
        result: Tensor = features[:, frames - kept :] + delta
        return result


class Renderer(nn.Module):
    """Renders a window of T frames from eroded references, face shapes and audio."""

    def __init__(self, config: RendererConfig) -> None:
        super().__init__()
        self.config = config
        base = config.base_channels
        channels = 4 * base
        self.encoder = nn.Sequential(
            _conv_block(config.in_channels, base, 7, 1),
            _conv_block(base, 2 * base, 4, 2),
            _conv_block(2 * base, channels, 4, 2),
            *(ResidualBlock(channels) for _ in range(config.residual_blocks)),
        )
        self.fusion = AudioFusion(config.audio_dim, channels) if config.use_audio_fusion else None
        feature_size = config.image_size // 4
        self.dependency = DependencyModule(channels, feature_size, config) if config.use_dependency else None
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(channels, 2 * base, 4, 2, padding=1),
            nn.InstanceNorm2d(2 * base, affine=True),
            nn.LeakyReLU(0.2, inplace=True),
            nn.ConvTranspose2d(2 * base, base, 4, 2, padding=1),
            nn.InstanceNorm2d(base, affine=True),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(base, 3, 7, padding=3),
            nn.Tanh(),
        )
        self.sharpen: Tensor | None
        sharpening = config.output_sharpening
        self.register_buffer(
            "sharpen", sharpen_kernel(sharpening) if sharpening > 0 else None, persistent=False
        )

    @property
    def tokens_per_frame(self) -> int:
        return self.config.patch_grid**2

    def encode(self, eroded: Tensor, shapes: Tensor, audio: Tensor) -> Tensor:
        """Per-frame encoder, residual blocks and audio fusion.

        Args:
            eroded: (N, 3, S, S) eroded reference frames in [-1, 1].
            shapes: (N, 4, S, S) face shapes in [0, 1].
            audio: (N, A) per-frame audio features.

        Returns:
            (N, 4·base, S/4, S/4) fused features.
        """
        features: Tensor = self.encoder(torch.cat([eroded, shapes * 2 - 1], dim=1))
        if self.fusion is not None:
            features = self.fusion(features, audio)
        return features

    @property
    def feature_channels(self) -> int:
        """Channels of the encoded feature map (4·base)."""
        return 4 * self.config.base_channels

    @property
    def feature_size(self) -> int:
        """Side of the encoded feature map (S/4)."""
        return self.config.image_size // 4

    def mix(self, features: Tensor, mask: Tensor | None = None, last_frames: int | None = None) -> Tensor:
        """Dependency modelling over a window: (B, T, C, h, w) → (B, F, C, h, w).

        ``last_frames`` (F) keeps only the newest F frames of the result (default: all T).
        """
        if self.dependency is None:
            return features if last_frames is None else features[:, features.shape[1] - last_frames :]
        result: Tensor = self.dependency(features, mask, last_frames)
        return result

    def decode(self, features: Tensor) -> Tensor:
        """(N, C, h, w) → (N, 3, S, S) frames in [-1, 1] (sharpened outside training)."""
        result: Tensor = self.decoder(features)
        if self.sharpen is not None and not self.training:
            padded = F.pad(result, (SHARPEN_RADIUS,) * 4, mode="replicate")
            result = F.conv2d(padded, self.sharpen.to(result.dtype), groups=3).clamp(-1.0, 1.0)
        return result

    def forward(self, eroded: Tensor, shapes: Tensor, audio: Tensor, mask: Tensor | None = None) -> Tensor:
        """Render a window.

        Args:
            eroded: (B, T, 3, S, S) eroded reference frames in [-1, 1].
            shapes: (B, T, 4, S, S) (smoothed) face shapes in [0, 1].
            audio: (B, T, A) per-frame audio features.
            mask: optional (T·p², T·p²) bool attention mask (see ``block_causal_mask``).

        Returns:
            (B, T, 3, S, S) frames in [-1, 1].
        """
        batch, frames = eroded.shape[:2]
        features = self.encode(eroded.flatten(0, 1), shapes.flatten(0, 1), audio.flatten(0, 1))
        features = self.mix(features.reshape(batch, frames, *features.shape[1:]), mask)
        frames_out = self.decode(features.flatten(0, 1))
        return frames_out.reshape(batch, frames, *frames_out.shape[1:])
