"""Comparing two backends on the same random inputs (export checks, benchmarks, tests)."""

from __future__ import annotations

import numpy as np

from engines.backends.base import Backend, ChunkInput, FloatArray, StreamShape, host_array


def random_inputs(
    shape: StreamShape, batch: int = 1, seed: int = 0
) -> tuple[FloatArray, FloatArray, ChunkInput]:
    """Inputs of the right shapes and value ranges: audio features, mouth parameters and a chunk.

    Returns:
        audio (B, audio_frames, A), mouth (B, smoothing_frames, Em) and a ``ChunkInput``.
    """
    rng = np.random.default_rng(seed)

    def normal(size: tuple[int, ...]) -> FloatArray:
        return rng.standard_normal(size).astype(np.float32)

    sizes = shape.renderer_inputs(batch)
    chunk = ChunkInput(
        past_features=normal(sizes["past_features"]),
        eroded=rng.uniform(-1, 1, sizes["eroded"]).astype(np.float32),
        shapes=rng.uniform(0, 1, sizes["shapes"]).astype(np.float32),
        audio=normal(sizes["audio"]),
    )
    return normal(shape.expression_io(batch)[0]), normal(shape.smoothing_io(batch)[0]), chunk


def max_differences(first: Backend, second: Backend, batch: int = 1, seed: int = 0) -> dict[str, float]:
    """Largest absolute difference of every output of two backends loaded for the same shapes."""
    audio, mouth, chunk = random_inputs(first.shape, batch, seed)
    a = first.run(chunk)
    frames, features = host_array(a.frames).copy(), host_array(a.features).copy()
    b = second.run(chunk)
    return {
        "mouth": float(np.abs(first.expressions(audio).copy() - second.expressions(audio)).max()),
        "smoothing_weights": float(
            np.abs(first.smoothing_weights(mouth).copy() - second.smoothing_weights(mouth)).max()
        ),
        "frames": float(np.abs(frames - host_array(b.frames)).max()),
        "features": float(np.abs(features - host_array(b.features)).max()),
    }
