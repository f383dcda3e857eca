"""Attention masks and a pre-norm transformer block shared by the networks.

Masks follow ``torch.nn.functional.scaled_dot_product_attention``: a boolean (Q, K) tensor,
True where a query may attend to a key.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def lookahead_mask(frames: int, lookahead: int, device: torch.device | None = None) -> Tensor:
    """(T, T) bool: frame i sees every earlier frame and at most ``lookahead`` later ones."""
    index = torch.arange(frames, device=device)
    return index[None, :] <= index[:, None] + lookahead


def block_causal_mask(
    frames: int, chunk: int, tokens_per_frame: int = 1, device: torch.device | None = None
) -> Tensor:
    """(T·n, T·n) bool for a window whose last ``chunk`` frames are new: a frame sees earlier
    frames and the frames of its own chunk, never a later chunk. Chunks are counted back from
    the window's end, so a window of P past + C new frames puts the C new ones in one chunk.

    Args:
        frames: T, frames in the window.
        chunk: C, frames per chunk.
        tokens_per_frame: n, tokens each frame contributes (p·p patches).
    """
    index = torch.arange(frames, device=device)
    chunk_id = (frames - 1 - index) // chunk  # 0 for the newest chunk
    allowed = chunk_id[None, :] >= chunk_id[:, None]
    return allowed.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


def sinusoidal_positions(count: int, dim: int, device: torch.device | None = None) -> Tensor:
    """(count, dim) fixed sinusoidal position codes."""
    position = torch.arange(count, device=device, dtype=torch.float32)[:, None]
    rates = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10_000.0) / dim)
    )
    codes = torch.zeros(count, dim, device=device)
    codes[:, 0::2] = torch.sin(position * rates)
    codes[:, 1::2] = torch.cos(position * rates[: dim // 2])
    return codes


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + feed-forward block over (B, L, d) tokens."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"token width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, L, d) tokens, optional (L, L) bool mask (True = may attend) → (B, L, d)."""
        batch, length, dim = tokens.shape
        qkv = self.qkv(self.norm1(tokens)).reshape(batch, length, 3, self.heads, dim // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        attended = attended.transpose(1, 2).reshape(batch, length, dim)
        tokens = tokens + self.dropout(self.proj(attended))
        result: Tensor = tokens + self.dropout(self.mlp(self.norm2(tokens)))
        return result
