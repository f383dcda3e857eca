"""The PyTorch backend: eager on the CPU; on CUDA half precision, ``torch.compile`` and CUDA graphs.

On CUDA with ``cuda_graphs`` each of the three computations is captured once, at ``max_batch``,
into a CUDA graph with static input and output buffers; a call copies its inputs into the static
buffers (smaller batches use the leading rows), replays the graph and copies the outputs back to
pinned host memory. With ``compile`` the modules go through ``torch.compile`` first (captured
into the graphs afterwards when both are on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engines.backends.base import BackendBase, ChunkInput, ChunkOutput, FloatArray, Precision, StreamShape
from engines.backends.graphs import CausalSmoothingWeights, Expressions, RendererChunk
from engines.bundle import AvatarNetworks
from engines.errors import InputError

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WARMUP_CALLS = 3


class _CudaGraphCall:
    """A module captured into a CUDA graph at fixed (max-batch) input shapes."""

    def __init__(self, module: nn.Module, inputs: list[Tensor]) -> None:
        self.static_inputs = [tensor.clone() for tensor in inputs]
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(WARMUP_CALLS):
                module(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            outputs = module(*self.static_inputs)
        self.static_outputs: list[Tensor] = list(outputs) if isinstance(outputs, tuple) else [outputs]

    def __call__(self, *inputs: Tensor) -> list[Tensor]:
        batch = inputs[0].shape[0]
        for static, tensor in zip(self.static_inputs, inputs, strict=True):
            static[:batch].copy_(tensor, non_blocking=True)
        self.graph.replay()
        return [output[:batch] for output in self.static_outputs]


class TorchBackend(BackendBase):
    """Runs the avatar's networks with PyTorch.

    Args:
        networks: the avatar's networks (moved to ``device`` and cast to ``precision``).
        shape: the fixed shapes.
        device: ``cpu`` or ``cuda[:n]``.
        precision: ``fp32`` anywhere; ``fp16``/``bf16`` on CUDA only.
        compile: run the modules through ``torch.compile`` (CUDA).
        cuda_graphs: capture each computation into a CUDA graph (CUDA).
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
        on_cuda = torch.device(device).type == "cuda"
        super().__init__("torch-cuda" if on_cuda else "torch-cpu", shape)
        self.device = torch.device(device)
        if on_cuda and not torch.cuda.is_available():
            raise InputError("torch backend on cuda: no CUDA device is available")
        if not on_cuda and (precision != "fp32" or compile or cuda_graphs):
            raise InputError(
                "torch backend on the CPU runs fp32 eager only (fp16, compile, CUDA graphs need cuda)"
            )
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.compiled = compile
        self.cuda_graphs = cuda_graphs
        modules: dict[str, nn.Module] = {
            "renderer": RendererChunk(networks.renderer, shape),
            "expressions": Expressions(networks.audio2expression),
            "smoothing": CausalSmoothingWeights(networks.smoothing),
        }
        self._calls: dict[str, Callable[..., list[Tensor]]] = {}
        for key, module in modules.items():
            module = module.to(self.device).eval()
            if key != "smoothing":  # the smoothing weights are tiny; BatchNorm stays in fp32
                module = module.to(self.dtype)
            runnable: nn.Module | Callable[..., Any] = torch.compile(module) if compile else module
            self._calls[key] = self._wrap(key, runnable)

    def _dummy_inputs(self, key: str) -> list[Tensor]:
        batch = self.shape.max_batch
        if key == "renderer":
            shapes = list(self.shape.renderer_inputs(batch).values())
        elif key == "expressions":
            shapes = [self.shape.expression_io(batch)[0]]
        else:
            shapes = [self.shape.smoothing_io(batch)[0]]
        dtype = torch.float32 if key == "smoothing" else self.dtype
        return [torch.zeros(size, device=self.device, dtype=dtype) for size in shapes]

    def _wrap(self, key: str, module: nn.Module | Callable[..., Any]) -> Callable[..., list[Tensor]]:
        if self.cuda_graphs:
            return _CudaGraphCall(module, self._dummy_inputs(key))  # type: ignore[arg-type]

        def call(*inputs: Tensor) -> list[Tensor]:
            with torch.inference_mode():
                outputs = module(*inputs)
            return list(outputs) if isinstance(outputs, tuple) else [outputs]

        return call

    def _to_device(self, array: FloatArray, dtype: torch.dtype | None = None) -> Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        return tensor.to(self.device, dtype or self.dtype, non_blocking=True)

    def _to_host(self, tensor: Tensor) -> FloatArray:
        array: FloatArray = tensor.float().cpu().numpy()
        return array

    def expressions(self, audio: FloatArray) -> FloatArray:
        self._check_expressions(audio)
        [mouth] = self._calls["expressions"](self._to_device(audio))
        return self._to_host(mouth)

    def smoothing_weights(self, mouth: FloatArray) -> FloatArray:
        self._check_smoothing(mouth)
        [weights] = self._calls["smoothing"](self._to_device(mouth, torch.float32))
        return self._to_host(weights)

    def run(self, chunk: ChunkInput) -> ChunkOutput:
        self._check_chunk(chunk)
        inputs = [self._to_device(array) for array in chunk.arrays().values()]
        frames, features = self._calls["renderer"](*inputs)
        return ChunkOutput(frames=self._to_host(frames), features=self._to_host(features))

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": str(self.device),
            "precision": self.precision,
            "compile": self.compiled,
            "cuda_graphs": self.cuda_graphs,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "shape": self.shape.to_dict(),
        }

    def close(self) -> None:
        self._calls.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        super().close()
