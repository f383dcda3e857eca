"""Audio to mouth parameters: a transformer encoder with bounded look-ahead (Transformer-S2A-like)."""

from __future__ import annotations

from torch import Tensor, nn

from engines.nets.attention import TransformerBlock, lookahead_mask, sinusoidal_positions
from engines.nets.config import AudioToExpressionConfig


class AudioToExpression(nn.Module):
    """Predicts per-frame mouth parameters from per-frame audio features.

    A frame attends to all earlier frames of its window and to at most ``lookahead_frames`` later
    ones, so the same weights serve offline rendering and streaming with a fixed delay.
    Outputs are in units of each parameter's standard deviation (the face model's ``mouth_std``).
    """

    def __init__(self, config: AudioToExpressionConfig) -> None:
        super().__init__()
        self.config = config
        self.input = nn.Sequential(
            nn.Linear(config.features_per_frame * config.n_mels, config.d_model),
            nn.GELU(),
            nn.Linear(config.d_model, config.d_model),
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(config.d_model, config.heads, 2.0, config.dropout) for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(config.d_model)
        self.output = nn.Linear(config.d_model, config.mouth_dims)

    def forward(self, audio: Tensor) -> Tensor:
        """(B, T, features_per_frame · n_mels) normalised log-mel → (B, T, Em) normalised parameters."""
        frames = audio.shape[1]
        tokens = self.input(audio)
        tokens = tokens + sinusoidal_positions(frames, self.config.d_model, audio.device).to(tokens.dtype)
        mask = lookahead_mask(frames, self.config.lookahead_frames, audio.device)
        for block in self.blocks:
            tokens = block(tokens, mask)
        result: Tensor = self.output(self.norm(tokens))
        return result
