"""The one interface every inference engine implements, and the fixed shapes it is built for.

A backend runs the three networks of an avatar on a live stream:

- ``expressions``: a window of per-frame audio features → mouth parameters (audio-to-expression);
- ``smoothing_weights``: a window of mouth parameters → the causal adaptive-smoothing weights
  (the weighted sum of face shapes itself is ``engines.nets.smoothing.apply_smoothing_weights``);
- ``run``: one chunk of the renderer — the encoded features of the P past frames (cached by the
  caller from earlier chunks) plus the inputs of the C new frames → the C new frames and their
  encoded features (for the caller's cache). The dependency module sees P + C frames under the
  block-causal mask, so the result equals the full window's last C frames.

Backends are stateless between calls (the caller owns the feature cache), so one loaded backend
serves many sessions and one call renders a batch of them (``realtime.render_scheduler``). Every
shape but the batch is fixed when the backend is loaded; a call of another shape is an
``InputError``, never a silent re-plan. A backend may pad a batch up to one of its captured sizes
(CUDA graphs, TensorRT profiles) but returns exactly the rows it was given.

Renderer inputs may be numpy arrays or torch tensors (on the backend's ``device`` they are used
where they lie); outputs are numpy arrays from host backends and torch tensors on ``device`` from
GPU backends, so frames stay on the GPU until the encoder needs them. Arrays returned by a call
are the backend's own buffers: valid until the next call on the same backend, which must come
from the same thread (one worker thread per backend).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from types import TracebackType
from typing import Any, Literal, Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch

from engines.errors import InputError
from engines.nets.config import ModelConfig

FloatArray = npt.NDArray[np.float32]
# A renderer input or output: a host array, or a tensor on the backend's device.
ArrayOrTensor = FloatArray | torch.Tensor
Precision = Literal["fp32", "fp16", "bf16"]
# What a backend is called everywhere: its ``name``, ``--backend`` on the command line, benchmark rows.
BackendName = Literal["tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu", "torch-cpu"]


@dataclass(frozen=True)
class StreamShape:
    """The fixed shapes a backend is loaded for.

    Attributes:
        chunk_frames: C, new frames per renderer call.
        past_frames: P, cached earlier frames the new ones attend to.
        audio_frames: frames per audio-to-expression call.
        smoothing_frames: frames per smoothing-weights call.
        max_batch: most sessions batched in one call (the batch axis is the only free one).
        image_size: S, side of the rendered crop.
        audio_dim: A, audio features per frame (features_per_frame x n_mels).
        mouth_dims: Em, mouth parameters per frame.
        feature_channels, feature_size: the encoded feature map of a frame, (F, h, h).
        smoothing_taps: K, frames mixed by adaptive smoothing.
    """

    chunk_frames: int
    past_frames: int
    audio_frames: int
    smoothing_frames: int
    max_batch: int
    image_size: int
    audio_dim: int
    mouth_dims: int
    feature_channels: int
    feature_size: int
    smoothing_taps: int

    @classmethod
    def for_config(
        cls,
        config: ModelConfig,
        chunk_frames: int | None = None,
        past_frames: int | None = None,
        max_batch: int | None = None,
    ) -> StreamShape:
        """Shapes from an avatar's config; arguments override its ``streaming`` section."""
        streaming = config.streaming
        chunk = chunk_frames if chunk_frames is not None else streaming.chunk_frames
        if chunk < 1:
            raise InputError(f"chunk of {chunk} frames: need at least 1")
        past = past_frames if past_frames is not None else streaming.past_frames
        if past is None:
            past = max(0, config.sequence_length - chunk)
        if past < 0:
            raise InputError(f"{past} past frames: need 0 or more")
        renderer = config.renderer
        return cls(
            chunk_frames=chunk,
            past_frames=past,
            audio_frames=streaming.audio_window_frames,
            smoothing_frames=streaming.smoothing_window_frames,
            max_batch=max_batch if max_batch is not None else streaming.max_batch,
            image_size=renderer.image_size,
            audio_dim=renderer.audio_dim,
            mouth_dims=config.audio.mouth_dims,
            feature_channels=4 * renderer.base_channels,
            feature_size=renderer.image_size // 4,
            smoothing_taps=config.smoothing.width,
        )

    @property
    def window_frames(self) -> int:
        """P + C, the frames the dependency module sees per call."""
        return self.past_frames + self.chunk_frames

    @property
    def tag(self) -> str:
        """Short name of the shape, used in export folder names (the batch is free in an export,
        so it is not part of the name)."""
        return f"c{self.chunk_frames}-p{self.past_frames}-a{self.audio_frames}-w{self.smoothing_frames}"

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def with_max_batch(self, max_batch: int) -> StreamShape:
        """The same shapes for at most ``max_batch`` sessions a call."""
        if max_batch < 1:
            raise InputError(f"max batch {max_batch}: need at least 1")
        return replace(self, max_batch=max_batch)

    def same_graphs(self, other: StreamShape) -> bool:
        """Whether an export made for ``other`` serves this shape (everything but the batch)."""
        return replace(self, max_batch=1) == replace(other, max_batch=1)

    @property
    def batch_buckets(self) -> tuple[int, ...]:
        """Batch sizes a backend with captured shapes (CUDA graphs, TensorRT profiles) prepares:
        powers of two below ``max_batch``, and ``max_batch``."""
        sizes = [1 << k for k in range(max(1, self.max_batch).bit_length()) if 1 << k < self.max_batch]
        return (*sizes, self.max_batch)

    def bucket_for(self, batch: int) -> int:
        """The smallest bucket that holds ``batch`` rows."""
        return next(size for size in self.batch_buckets if size >= batch)

    def renderer_inputs(self, batch: int) -> dict[str, tuple[int, ...]]:
        """Name → shape of the renderer chunk's inputs for ``batch`` sessions."""
        s, c, f, h = self.image_size, self.chunk_frames, self.feature_channels, self.feature_size
        return {
            "past_features": (batch, self.past_frames, f, h, h),
            "eroded": (batch, c, 3, s, s),
            "shapes": (batch, c, 4, s, s),
            "audio": (batch, c, self.audio_dim),
        }

    def renderer_outputs(self, batch: int) -> dict[str, tuple[int, ...]]:
        """Name → shape of the renderer chunk's outputs."""
        s, c, f, h = self.image_size, self.chunk_frames, self.feature_channels, self.feature_size
        return {"frames": (batch, c, 3, s, s), "features": (batch, c, f, h, h)}

    def expression_io(self, batch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of the audio-to-expression input ``audio`` and output ``mouth``."""
        return (batch, self.audio_frames, self.audio_dim), (batch, self.audio_frames, self.mouth_dims)

    def smoothing_io(self, batch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of the smoothing input ``mouth`` and output ``weights``."""
        return (batch, self.smoothing_frames, self.mouth_dims), (
            batch,
            self.smoothing_frames,
            self.smoothing_taps,
        )

    def check(self, name: str, array: npt.NDArray[Any] | torch.Tensor, expected: tuple[int, ...]) -> int:
        """Check one input's shape (any batch from 1 to ``max_batch``); returns the batch.

        Raises:
            InputError: another shape, or a batch outside 1..max_batch.
        """
        if array.ndim != len(expected) or tuple(array.shape[1:]) != expected[1:]:
            raise InputError(
                f"{name}: shape {tuple(array.shape)} does not match the backend's fixed shape "
                f"(batch, {', '.join(map(str, expected[1:]))}); load a backend for this shape instead"
            )
        batch = int(array.shape[0])
        if not 1 <= batch <= self.max_batch:
            raise InputError(f"{name}: batch {batch} outside 1..{self.max_batch} (the backend's max_batch)")
        return batch


@dataclass
class ChunkInput:
    """One renderer call for B sessions.

    Attributes:
        past_features: (B, P, F, h, h) encoded features of the P previous frames, oldest first.
        eroded: (B, C, 3, S, S) eroded reference crops of the new frames, in [-1, 1].
        shapes: (B, C, 4, S, S) smoothed face shapes of the new frames, in [0, 1].
        audio: (B, C, A) per-frame audio features of the new frames.
    """

    past_features: ArrayOrTensor
    eroded: ArrayOrTensor
    shapes: ArrayOrTensor
    audio: ArrayOrTensor

    def arrays(self) -> dict[str, ArrayOrTensor]:
        return {
            "past_features": self.past_features,
            "eroded": self.eroded,
            "shapes": self.shapes,
            "audio": self.audio,
        }


@dataclass
class ChunkOutput:
    """What a renderer call returns.

    Attributes:
        frames: (B, C, 3, S, S) the new frames, in [-1, 1].
        features: (B, C, F, h, h) their encoded features, to append to the caller's cache.
    """

    frames: ArrayOrTensor
    features: ArrayOrTensor


def host_array(value: ArrayOrTensor) -> FloatArray:
    """A float32 C-contiguous numpy view (or copy, for device tensors) of an input or output."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(value, dtype=np.float32)


@runtime_checkable
class Backend(Protocol):
    """An inference engine for one avatar's networks at fixed shapes."""

    name: BackendName
    shape: StreamShape
    device: torch.device  # where its renderer outputs live and per-frame tensor work should run

    def expressions(self, audio: FloatArray) -> FloatArray:
        """(B, audio_frames, A) normalised audio features → (B, audio_frames, Em) mouth
        parameters in units of their standard deviation."""
        ...

    def smoothing_weights(self, mouth: FloatArray) -> FloatArray:
        """(B, smoothing_frames, Em) normalised mouth parameters → (B, smoothing_frames, K)
        causal smoothing weights (sum 1 over K)."""
        ...

    def run(self, chunk: ChunkInput) -> ChunkOutput:
        """Render one chunk (see ``ChunkInput`` and ``ChunkOutput``)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the backend is: device, precision, versions, options (for logs and benchmarks)."""
        ...

    def close(self) -> None:
        """Release the engine's memory; later calls raise."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class BackendBase:
    """Shape checks, the closed state and the context manager shared by every backend."""

    def __init__(self, name: BackendName, shape: StreamShape) -> None:
        self.name: BackendName = name
        self.shape = shape
        self.device = torch.device("cpu")
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise InputError(f"{self.name} backend is closed")

    def _check_chunk(self, chunk: ChunkInput) -> int:
        self._check_open()
        expected = self.shape.renderer_inputs(self.shape.max_batch)
        batches = {
            name: self.shape.check(name, array, expected[name]) for name, array in chunk.arrays().items()
        }
        if len(set(batches.values())) != 1:
            raise InputError(f"renderer inputs disagree on the batch: {batches}")
        return next(iter(batches.values()))

    def _check_expressions(self, audio: FloatArray) -> int:
        self._check_open()
        return self.shape.check("audio", audio, self.shape.expression_io(self.shape.max_batch)[0])

    def _check_smoothing(self, mouth: FloatArray) -> int:
        self._check_open()
        return self.shape.check("mouth", mouth, self.shape.smoothing_io(self.shape.max_batch)[0])

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
