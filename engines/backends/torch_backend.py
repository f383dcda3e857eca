"""The PyTorch backend: eager on the CPU; on CUDA half precision, ``torch.compile`` and CUDA graphs.

Inputs and outputs. Renderer inputs may be numpy arrays or tensors. On CUDA a tensor already on
the backend's device is used where it lies (cast to the compute dtype); a host array is copied
into a pinned staging buffer (one per input, allocated at ``max_batch`` on first use and kept)
and sent with a non-blocking copy. ``run`` returns float32 tensors on the device (frames and
features stay on the GPU); on the CPU it returns numpy arrays, as every host backend does.
``expressions`` and ``smoothing_weights`` return numpy arrays everywhere.

Streams. On CUDA all the work of a call is queued on the backend's own stream: it first waits
for what the caller had queued on its current stream (so inputs computed there are complete),
and the caller's stream then waits for the backend's (so outputs are complete before the caller
uses them); tensors crossing between the two streams are marked with ``record_stream`` for the
caching allocator. Host results are returned only after synchronising that stream.

Bucketed batches. The batch sizes a call can run at are ``StreamShape.batch_buckets``: powers
of two below ``max_batch``, then ``max_batch``. With ``cuda_graphs`` or ``compile`` (the modes
that specialise on shapes) a call of n rows is copied into static input buffers, padded with
zero rows to the smallest bucket that holds it (``TorchBackend.bucket_for``), run at that
bucket, and the first n output rows are returned. Padding cannot change real rows: every layer
works per sample (instance, layer and eval-mode batch norm; attention within a sample). Plain
eager calls run at their exact batch.

CUDA graphs (``cuda_graphs``). One graph per computation and bucket is captured when the backend
is loaded, largest bucket first, after warm-up calls on the backend's stream, so no call pays
for a capture. Memory: the static inputs exist once, at ``max_batch`` (bucket b reads their first
b rows); each bucket keeps its own static outputs (together less than twice the outputs of one
``max_batch`` call); the intermediates of all buckets of a computation share one private
memory pool, sized by the largest bucket. Returned tensors are views of the static outputs:
valid until the next call of the same computation (``base`` module docstring).

``torch.compile`` with the default dynamic-shape policy sees at most a few batch sizes (the
buckets): the first is compiled static, the next ones mark the batch axis dynamic, batch 1
stays specialised. All compilation happens at load, in the warm-up calls of each bucket.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engines.backends.base import (
    ArrayOrTensor,
    BackendBase,
    ChunkInput,
    ChunkOutput,
    FloatArray,
    Precision,
    StreamShape,
)
from engines.backends.graphs import CausalSmoothingWeights, Expressions, RendererChunk
from engines.bundle import AvatarNetworks
from engines.errors import InputError

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WARMUP_CALLS = 3


def _bucket_for(buckets: Sequence[int], batch: int) -> int:
    """The smallest of ``buckets`` (ascending) that holds ``batch`` rows.

    Raises:
        InputError: ``batch`` below 1 or above the largest bucket.
    """
    if batch >= 1:
        for bucket in buckets:
            if bucket >= batch:
                return bucket
    raise InputError(f"batch {batch} outside 1..{buckets[-1]} (the backend's max_batch)")


def compute_dtypes(precision: Precision) -> dict[str, torch.dtype]:
    """Dtype each computation runs in: the smoothing weights (a tiny network with BatchNorm)
    stay float32 at every precision."""
    dtype = DTYPES[precision]
    return {"renderer": dtype, "expressions": dtype, "smoothing": torch.float32}


class Float32Outputs(nn.Module):
    """A module whose outputs are cast to float32 (inside the compiled or captured computation)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        outputs = self.module(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return tuple(output.float() for output in outputs)


def _as_tensor(value: ArrayOrTensor) -> Tensor:
    """A tensor of an input as it lies (a numpy array is shared, made float32 C-contiguous)."""
    return value if isinstance(value, Tensor) else torch.from_numpy(np.ascontiguousarray(value, np.float32))


def _as_list(outputs: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [outputs] if isinstance(outputs, Tensor) else list(outputs)


class BucketedCall:
    """A module run on static, zero-padded input buffers at bucketed batch sizes.

    The input buffers are allocated once at the largest bucket; bucket b reads their first b rows.
    A call of n rows copies its inputs into rows [0, n), zeroes the rows an earlier, larger call
    left behind, runs the smallest bucket >= n and returns views of the first n output rows.

    Args:
        module: the computation; takes the inputs in order, returns a tensor or a tuple.
        row_shapes: each input's shape without the batch axis.
        dtype: dtype of the static inputs (the module's compute dtype).
        device: where the buffers live.
        buckets: ascending batch sizes (``StreamShape.batch_buckets``).
        graphs: capture one CUDA graph per bucket now (CUDA only); otherwise run the module
            eagerly on the padded rows.
        stream: the CUDA stream to warm up and capture on (graphs only; default: a new one).
        warmup_calls: calls per bucket before capture (or, eager, to compile ahead of use).
    """

    def __init__(
        self,
        module: Callable[..., Tensor | Sequence[Tensor]],
        row_shapes: Sequence[tuple[int, ...]],
        dtype: torch.dtype,
        device: torch.device,
        buckets: Sequence[int],
        graphs: bool = False,
        stream: torch.cuda.Stream | None = None,
        warmup_calls: int = 0,
    ) -> None:
        if graphs and device.type != "cuda":
            raise InputError("CUDA graphs need a cuda device")
        self.module = module
        self.buckets = tuple(buckets)
        self.static_inputs = [
            torch.zeros((self.buckets[-1], *row), dtype=dtype, device=device) for row in row_shapes
        ]
        self._dirty_rows = 0  # rows [0, _dirty_rows) of the static inputs may be non-zero
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._static_outputs: dict[int, list[Tensor]] = {}
        if graphs:
            self._capture(stream or torch.cuda.Stream(device=device), warmup_calls)  # type: ignore[no-untyped-call]
        elif warmup_calls:
            for bucket in reversed(self.buckets):
                for _ in range(warmup_calls):
                    self._run(bucket)

    def _capture(self, stream: torch.cuda.Stream, warmup_calls: int) -> None:
        device = self.static_inputs[0].device
        pool = torch.cuda.graph_pool_handle()
        # the static inputs were zeroed on the current stream
        stream.wait_stream(torch.cuda.current_stream(device))
        for bucket in reversed(self.buckets):
            inputs = [static[:bucket] for static in self.static_inputs]
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(max(1, warmup_calls)):
                    self.module(*inputs)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream), torch.inference_mode():
                outputs = _as_list(self.module(*inputs))
            self._graphs[bucket] = graph
            self._static_outputs[bucket] = outputs
        stream.synchronize()

    def _run(self, bucket: int) -> list[Tensor]:
        graph = self._graphs.get(bucket)
        if graph is not None:
            graph.replay()
            return self._static_outputs[bucket]
        with torch.inference_mode():
            return _as_list(self.module(*(static[:bucket] for static in self.static_inputs)))

    def __call__(self, *inputs: Tensor) -> list[Tensor]:
        """Run ``inputs`` (each (n, *row_shape), on the buffers' device) → the outputs' first n rows."""
        rows = int(inputs[0].shape[0])
        bucket = _bucket_for(self.buckets, rows)
        for static, tensor in zip(self.static_inputs, inputs, strict=True):
            static[:rows].copy_(tensor, non_blocking=True)
            if self._dirty_rows > rows:
                static[rows : self._dirty_rows].zero_()
        self._dirty_rows = rows
        return [output[:rows] for output in self._run(bucket)]

    @property
    def captured(self) -> tuple[int, ...]:
        """The buckets with a captured CUDA graph."""
        return tuple(sorted(self._graphs))


@dataclass
class _Computation:
    """One of the three computations: how to call it and what it takes."""

    call: Callable[..., list[Tensor]]
    inputs: dict[str, tuple[int, ...]]  # name → shape without the batch axis
    dtype: torch.dtype


class TorchBackend(BackendBase):
    """Runs the avatar's networks with PyTorch.

    Args:
        networks: the avatar's networks (on CUDA a copy is moved there and cast to
            ``precision``, the smoothing module staying float32; the caller's are left as they are).
        shape: the fixed shapes.
        device: ``cpu`` or ``cuda[:n]``.
        precision: ``fp32`` anywhere; ``fp16``/``bf16`` on CUDA only.
        compile: run the modules through ``torch.compile`` (CUDA), batches padded to buckets.
        cuda_graphs: capture each computation into one CUDA graph per bucket at load (CUDA).
    """

    def __init__(
        self,
        networks: AvatarNetworks,
        shape: StreamShape,
        device: str = "cpu",
        precision: Precision = "fp32",
        compile: bool = False,
        cuda_graphs: bool = False,
    ) -> None:
        requested = torch.device(device)
        on_cuda = requested.type == "cuda"
        super().__init__("torch-cuda" if on_cuda else "torch-cpu", shape)
        if on_cuda and not torch.cuda.is_available():
            raise InputError("torch backend on cuda: no CUDA device is available")
        if not on_cuda and (precision != "fp32" or compile or cuda_graphs):
            raise InputError(
                "torch backend on the CPU runs fp32 eager only (fp16, compile, CUDA graphs need cuda)"
            )
        if on_cuda and requested.index is None:
            # an explicit index, so that ``tensor.device == backend.device`` holds for its outputs
            requested = torch.device("cuda", torch.cuda.current_device())
        self.device = requested
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.compiled = compile
        self.cuda_graphs = cuda_graphs
        self.batch_buckets = shape.batch_buckets
        self.padded = cuda_graphs or compile
        self.stream: torch.cuda.Stream | None = None
        self._staged: torch.cuda.Event | None = None
        if on_cuda:
            torch.backends.cudnn.benchmark = True  # process-wide; the shapes are few and fixed
            if precision == "fp32":
                # fp32 means IEEE fp32: cuDNN's default rounds convolution inputs to TF32 (10-bit
                # mantissa), which would break the 1e-3 parity with the CPU. Process-wide.
                torch.backends.cudnn.conv.fp32_precision = "ieee"  # type: ignore[attr-defined]
                torch.backends.cuda.matmul.fp32_precision = "ieee"
            self.stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
            self._staged = torch.cuda.Event()  # type: ignore[no-untyped-call]
        self._pinned_inputs: dict[tuple[str, str], Tensor] = {}
        self._pinned_outputs: dict[str, Tensor] = {}
        dtypes = compute_dtypes(precision)
        modules: dict[str, nn.Module] = {
            "renderer": RendererChunk(networks.renderer, shape),
            "expressions": Expressions(networks.audio2expression),
            "smoothing": CausalSmoothingWeights(networks.smoothing),
        }
        row_shapes = {
            "renderer": {name: size[1:] for name, size in shape.renderer_inputs(1).items()},
            "expressions": {"audio": shape.expression_io(1)[0][1:]},
            "smoothing": {"mouth": shape.smoothing_io(1)[0][1:]},
        }
        self._computations: dict[str, _Computation] = {}
        with self._on_stream():
            for key, module in modules.items():
                if on_cuda:  # ``Module.to`` works in place: leave the caller's networks where they are
                    module = copy.deepcopy(module)
                module = Float32Outputs(module.to(self.device, dtypes[key]).eval())
                runnable: Callable[..., Any] = torch.compile(module) if compile else module
                self._computations[key] = _Computation(
                    self._wrap(runnable, list(row_shapes[key].values()), dtypes[key]),
                    row_shapes[key],
                    dtypes[key],
                )
        if self.stream is not None:
            self.stream.synchronize()

    def _wrap(
        self, module: Callable[..., Any], row_shapes: list[tuple[int, ...]], dtype: torch.dtype
    ) -> Callable[..., list[Tensor]]:
        if self.padded:
            return BucketedCall(
                module,
                row_shapes,
                dtype,
                self.device,
                self.batch_buckets,
                graphs=self.cuda_graphs,
                stream=self.stream,
                warmup_calls=WARMUP_CALLS if self.cuda_graphs else 1,
            )

        def call(*inputs: Tensor) -> list[Tensor]:
            with torch.inference_mode():
                return _as_list(module(*inputs))

        return call

    def bucket_for(self, batch: int) -> int:
        """The batch a call of ``batch`` rows runs at (padded modes; plain eager runs ``batch``)."""
        return _bucket_for(self.batch_buckets, batch)

    @contextlib.contextmanager
    def _on_stream(self) -> Iterator[None]:
        if self.stream is None:
            yield
            return
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            yield

    def _stage(self, key: str, values: Mapping[str, ArrayOrTensor], batch: int) -> list[Tensor]:
        """Inputs of one computation as tensors on the device in its dtype (on the backend's
        stream, inside ``_on_stream``)."""
        dtype = self._computations[key].dtype
        staged: list[Tensor] = []
        pinned_used = False
        for name, value in values.items():
            if isinstance(value, Tensor) and value.device == self.device:
                if self.stream is not None:
                    value.record_stream(self.stream)
                staged.append(value.to(dtype))
            elif self.stream is None:
                staged.append(_as_tensor(value).to(self.device, dtype))
            elif isinstance(value, Tensor) and value.device.type == "cuda":
                staged.append(value.to(self.device, dtype))  # another GPU: a peer copy
            else:
                if not pinned_used and self._staged is not None:
                    self._staged.synchronize()  # the previous call's copies out of the pinned buffers
                pinned_used = True
                pinned = self._pinned_input(key, name)[:batch]
                pinned.copy_(_as_tensor(value))
                staged.append(pinned.to(self.device, dtype, non_blocking=True))
        if pinned_used and self._staged is not None:
            self._staged.record()
        return staged

    def _pinned_input(self, key: str, name: str) -> Tensor:
        buffer = self._pinned_inputs.get((key, name))
        if buffer is None:
            row = self._computations[key].inputs[name]
            buffer = torch.empty((self.shape.max_batch, *row), dtype=torch.float32, pin_memory=True)
            self._pinned_inputs[(key, name)] = buffer
        return buffer

    def _call(self, key: str, values: Mapping[str, ArrayOrTensor], batch: int) -> list[Tensor]:
        """Run one computation on the backend's stream; on CUDA the caller's current stream is
        ordered after it."""
        if self.stream is None:
            return self._computations[key].call(*self._stage(key, values, batch))
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with self._on_stream():
            outputs = self._computations[key].call(*self._stage(key, values, batch))
        caller.wait_stream(self.stream)
        for output in outputs:
            output.record_stream(caller)
        return outputs

    def _to_host(self, key: str, tensor: Tensor) -> FloatArray:
        if self.stream is None:
            array: FloatArray = tensor.float().numpy()
            return array
        pinned = self._pinned_outputs.get(key)
        if pinned is None:
            rows = (self.shape.max_batch, *tensor.shape[1:])
            pinned = self._pinned_outputs[key] = torch.empty(rows, dtype=torch.float32, pin_memory=True)
        host = pinned[: tensor.shape[0]]
        with self._on_stream():
            host.copy_(tensor, non_blocking=True)
        self.stream.synchronize()
        result: FloatArray = host.numpy().copy()  # the pinned buffer is reused by the next call
        return result

    def expressions(self, audio: FloatArray) -> FloatArray:
        batch = self._check_expressions(audio)
        [mouth] = self._call("expressions", {"audio": audio}, batch)
        return self._to_host("expressions", mouth)

    def smoothing_weights(self, mouth: FloatArray) -> FloatArray:
        batch = self._check_smoothing(mouth)
        [weights] = self._call("smoothing", {"mouth": mouth}, batch)
        return self._to_host("smoothing", weights)

    def run(self, chunk: ChunkInput) -> ChunkOutput:
        """Render a chunk; on CUDA the outputs are float32 tensors on ``device`` (see the module
        docstring for how long they stay valid), on the CPU numpy arrays."""
        batch = self._check_chunk(chunk)
        frames, features = self._call("renderer", chunk.arrays(), batch)
        if self.stream is None:
            return ChunkOutput(frames=frames.numpy(), features=features.numpy())
        return ChunkOutput(frames=frames, features=features)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": str(self.device),
            "precision": self.precision,
            "compile": self.compiled,
            "cuda_graphs": self.cuda_graphs,
            "batch_buckets": list(self.batch_buckets),
            "padded_batches": self.padded,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cuda_fp32_convolutions": torch.backends.cudnn.conv.fp32_precision  # type: ignore[attr-defined]
            if self.device.type == "cuda"
            else None,
            "shape": self.shape.to_dict(),
        }

    def close(self) -> None:
        self._computations.clear()
        self._pinned_inputs.clear()
        self._pinned_outputs.clear()
        if self.stream is not None:
            self.stream.synchronize()
            torch.cuda.empty_cache()
        super().close()
