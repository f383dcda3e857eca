"""The TensorRT backend (TensorRT 10+, NVIDIA GPUs): engines built from the ONNX export.

For each exported graph a serialised engine is built with the TensorRT Python API — the ONNX
parser, fp16 (or fp32) builder precision, an optimisation profile over the batch axis
(1..max_batch, tuned for max_batch, every other axis fixed by the export), a workspace limit —
and cached on disk, keyed by (graph hash, GPU name, TensorRT version, precision, shapes); a later
load with the same key deserialises it instead of building. One dynamic profile serves every
batch from 1 to max_batch, so nothing is padded and nothing is built after load.

Buffers and streams. Device buffers (torch CUDA tensors) are allocated once at ``max_batch``. A
call queues everything on the backend's own CUDA stream, after the work the caller had queued on
its current stream, and the caller's stream then waits for it. Inputs that are contiguous
float32 tensors on the backend's device (at an address TensorRT accepts) are bound where they
lie by ``data_ptr()``; other tensors are copied into the input buffers on the device; host
arrays go through pinned staging buffers with non-blocking copies. The named tensors' shapes and
addresses are set and ``execute_async_v3`` is enqueued. ``run`` returns views of the output
buffers (the first ``batch`` rows, float32 on the device: the export's inputs and outputs are
fp32), valid until the next call; ``expressions`` and ``smoothing_weights`` copy their results
to pinned host memory and synchronise that stream only.

``tensorrt`` is imported lazily here and nowhere else; without it (or without a GPU) loading
this backend raises ``MissingDependencyError`` naming the extra to install.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.backends.base import (
    ArrayOrTensor,
    BackendBase,
    ChunkInput,
    ChunkOutput,
    FloatArray,
    StreamShape,
)
from engines.backends.onnx_export import ExportManifest, read_export
from engines.errors import InputError, MissingDependencyError, OutputError
from engines.files import atomic_output

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e .[tensorrt] (TensorRT 10 or newer) on a machine with an NVIDIA GPU"
DEFAULT_WORKSPACE_MB = 4096
# TensorRT's requirement on the address of a tensor bound with ``set_tensor_address``.
ADDRESS_ALIGNMENT = 256


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, checked to be version 10 or newer, on a machine with CUDA.

    Raises:
        MissingDependencyError: not installed, too old, or no CUDA device.
    """
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingDependencyError(f"the tensorrt backend needs TensorRT: {INSTALL_HINT}") from exc
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < 10:
        raise MissingDependencyError(f"TensorRT {tensorrt.__version__} is too old: {INSTALL_HINT}")
    if not torch.cuda.is_available():
        raise MissingDependencyError("the tensorrt backend needs an NVIDIA GPU (torch sees no CUDA device)")
    return tensorrt


def engine_cache_key(
    graph_sha256: str, gpu_name: str, tensorrt_version: str, precision: str, shape: StreamShape
) -> str:
    """Hex key of a built engine: anything that changes the engine changes the key."""
    fields = {
        "graph": graph_sha256,
        "gpu": gpu_name,
        "tensorrt": tensorrt_version,
        "precision": precision,
        "shape": shape.to_dict(),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def build_engine(
    trt: Any, onnx_path: Path, shape: StreamShape, precision: str, workspace_mb: int = DEFAULT_WORKSPACE_MB
) -> bytes:
    """Build a serialised TensorRT engine from an ONNX graph whose only dynamic axis is the batch.

    Raises:
        InputError: the parser rejects the graph or the build fails.
    """
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"{onnx_path.name}: TensorRT cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        rest = tuple(int(d) for d in tensor.shape)[1:]
        profile.set_shape(tensor.name, (1, *rest), (shape.max_batch, *rest), (shape.max_batch, *rest))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InputError(f"{onnx_path.name}: the TensorRT engine build failed (see the TensorRT log above)")
    return bytes(serialized)


class _Engine:
    """A deserialised engine, its execution context and its buffers at the maximum batch.

    Device buffers (inputs and outputs) are allocated at ``max_batch``; pinned host buffers, for
    inputs given as host arrays and for results read back to the host, on first use.
    """

    def __init__(self, trt: Any, runtime: Any, plan: bytes, device: torch.device) -> None:
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise InputError("TensorRT could not deserialise a cached engine (delete the cache and rebuild)")
        self.context = self.engine.create_execution_context()
        self.device = device
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._pinned_inputs: dict[str, torch.Tensor] = {}
        self._pinned_outputs: dict[str, torch.Tensor] = {}
        self._staged = torch.cuda.Event()  # type: ignore[no-untyped-call]
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            dims = (
                tuple(int(d) for d in self.engine.get_tensor_profile_shape(name, 0)[2])
                if (self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT)
                else None
            )
            dtype = dtypes[self.engine.get_tensor_dtype(name)]
            if dims is not None:
                self.inputs[name] = torch.empty(dims, dtype=dtype, device=device)
            else:
                self.outputs[name] = torch.empty(0, dtype=dtype, device=device)
        for name, buffer in self.inputs.items():
            self.context.set_input_shape(name, tuple(buffer.shape))
        for name in self.outputs:
            dims = tuple(int(d) for d in self.context.get_tensor_shape(name))
            self.outputs[name] = torch.empty(dims, dtype=self.outputs[name].dtype, device=device)

    def _bindable(self, name: str, value: ArrayOrTensor) -> bool:
        """Whether a tensor can be bound where it lies: on this device, the engine's dtype,
        contiguous, and at an address TensorRT accepts."""
        buffer = self.inputs[name]
        return (
            isinstance(value, torch.Tensor)
            and value.device == self.device
            and value.dtype == buffer.dtype
            and value.is_contiguous()
            and value.data_ptr() % ADDRESS_ALIGNMENT == 0
        )

    def __call__(
        self, inputs: Mapping[str, ArrayOrTensor], batch: int, stream: torch.cuda.Stream
    ) -> dict[str, torch.Tensor]:
        """Queue one execution on ``stream`` (the current stream, inside ``torch.cuda.stream``).

        Returns:
            name → the first ``batch`` rows of each output buffer, ready when ``stream`` gets there.
        """
        pinned_used = False
        for name, value in inputs.items():
            buffer = self.inputs[name]
            if isinstance(value, torch.Tensor) and self._bindable(name, value):
                value.record_stream(stream)
                address = value.data_ptr()
            elif isinstance(value, torch.Tensor) and value.device.type == "cuda":
                buffer[:batch].copy_(value)  # cast, made contiguous or sent from another GPU
                address = buffer.data_ptr()
            else:
                if not pinned_used:
                    self._staged.synchronize()  # the previous call's copies out of the pinned buffers
                pinned_used = True
                host = self._pinned_input(name)[:batch]
                host.copy_(_as_tensor(value))
                buffer[:batch].copy_(host, non_blocking=True)
                address = buffer.data_ptr()
            if not self.context.set_input_shape(name, (batch, *buffer.shape[1:])):
                raise InputError(f"TensorRT rejects batch {batch} for {name}")
            self.context.set_tensor_address(name, address)
        if pinned_used:
            self._staged.record(stream)
        for name, buffer in self.outputs.items():
            self.context.set_tensor_address(name, buffer.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise InputError("TensorRT execution failed")
        return {name: buffer[:batch] for name, buffer in self.outputs.items()}

    def _pinned_input(self, name: str) -> torch.Tensor:
        host = self._pinned_inputs.get(name)
        if host is None:
            buffer = self.inputs[name]
            host = torch.empty(buffer.shape, dtype=torch.float32, pin_memory=True)
            self._pinned_inputs[name] = host
        return host

    def to_host(self, name: str, output: torch.Tensor, stream: torch.cuda.Stream) -> FloatArray:
        """Copy an output (rows of ``outputs[name]``) to pinned host memory and wait for it.

        Returns:
            a float32 numpy view of the engine's own host buffer, valid until the next call.
        """
        host = self._pinned_outputs.get(name)
        if host is None:
            host = torch.empty(self.outputs[name].shape, dtype=torch.float32, pin_memory=True)
            self._pinned_outputs[name] = host
        rows = host[: output.shape[0]]
        rows.copy_(output, non_blocking=True)
        stream.synchronize()
        array: FloatArray = rows.numpy()
        return array


class TensorRTBackend(BackendBase):
    """Runs an ONNX export through TensorRT engines (built once, cached on disk).

    Args:
        export_dir: folder of an ONNX export.
        precision: ``fp16`` (default) or ``fp32`` builder precision; inputs and outputs stay fp32.
        cache_dir: where built engines are kept (default: ``<export_dir>/../tensorrt``).
        workspace_mb: the builder's workspace limit.
        device: the CUDA device.
        max_batch: most sessions a call (default: the export's shape; the export takes any).
    """

    def __init__(
        self,
        export_dir: Path,
        precision: str = "fp16",
        cache_dir: Path | None = None,
        workspace_mb: int = DEFAULT_WORKSPACE_MB,
        device: str = "cuda",
        max_batch: int | None = None,
    ) -> None:
        manifest: ExportManifest = read_export(export_dir)
        shape = manifest.stream_shape
        if max_batch is not None:
            shape = shape.with_max_batch(max_batch)
        super().__init__("tensorrt", shape)
        if precision not in ("fp16", "fp32"):
            raise InputError(f"tensorrt precision {precision!r}: use fp16 or fp32")
        trt = import_tensorrt()
        self.trt_version = str(trt.__version__)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise InputError(f"tensorrt device {device!r}: use cuda or cuda:<n>")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.gpu = torch.cuda.get_device_name(self.device)
        self.precision = precision
        self.cache_dir = cache_dir or export_dir.parent / "tensorrt"
        self.stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.plans: dict[str, Path] = {}
        self._engines: dict[str, _Engine] = {}
        for name, graph in manifest.graphs.items():
            key = engine_cache_key(graph.sha256, self.gpu, self.trt_version, precision, self.shape)
            plan_path = self.cache_dir / f"{name}-{precision}-{key}.plan"
            if plan_path.is_file():
                plan = plan_path.read_bytes()
            else:
                logger.info(
                    "building the TensorRT engine of %s (%s); cached as %s", name, precision, plan_path
                )
                plan = build_engine(trt, export_dir / graph.file, self.shape, precision, workspace_mb)
                _cache_plan(plan_path, plan)
            self.plans[name] = plan_path
            with torch.cuda.device(self.device):
                self._engines[name] = _Engine(trt, runtime, plan, self.device)

    def _execute(self, name: str, inputs: Mapping[str, ArrayOrTensor], batch: int) -> dict[str, torch.Tensor]:
        """One engine call on the backend's stream, ordered after the caller's current stream
        (whose work may have produced the inputs) and before it (which will read the outputs)."""
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            outputs = self._engines[name](inputs, batch, self.stream)
        caller.wait_stream(self.stream)
        return outputs

    def expressions(self, audio: FloatArray) -> FloatArray:
        batch = self._check_expressions(audio)
        engine = self._engines["audio2expression"]
        outputs = self._execute("audio2expression", {"audio": audio}, batch)
        return engine.to_host("mouth", outputs["mouth"], self.stream)

    def smoothing_weights(self, mouth: FloatArray) -> FloatArray:
        batch = self._check_smoothing(mouth)
        engine = self._engines["smoothing"]
        outputs = self._execute("smoothing", {"mouth": mouth}, batch)
        return engine.to_host("weights", outputs["weights"], self.stream)

    def run(self, chunk: ChunkInput) -> ChunkOutput:
        """Render a chunk; the outputs are views of the engine's device buffers (the first
        ``batch`` rows, float32 on ``device``), valid until the next ``run``."""
        batch = self._check_chunk(chunk)
        outputs = self._execute("renderer_chunk", chunk.arrays(), batch)
        return ChunkOutput(frames=outputs["frames"], features=outputs["features"])

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": str(self.device),
            "gpu": self.gpu,
            "precision": self.precision,
            "tensorrt": self.trt_version,
            "engines": {name: str(path) for name, path in self.plans.items()},
            "shape": self.shape.to_dict(),
        }

    def close(self) -> None:
        self.stream.synchronize()
        self._engines.clear()
        torch.cuda.empty_cache()
        super().close()


def _as_tensor(value: ArrayOrTensor) -> torch.Tensor:
    return (
        value
        if isinstance(value, torch.Tensor)
        else torch.from_numpy(np.ascontiguousarray(value, np.float32))
    )


def _cache_plan(path: Path, plan: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path.parent}: cannot cache the TensorRT engine ({exc.strerror})") from exc
    with atomic_output(path) as partial:
        partial.write_bytes(plan)
