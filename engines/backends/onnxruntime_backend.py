"""The ONNX Runtime backend: the exported graphs on the CPU or the CUDA execution provider.

Sessions use every graph optimisation (``ORT_ENABLE_ALL``, recorded in ``describe``), sequential
execution, one inter-op thread and no spin-waiting of idle threads. The backend's one thread setting,
``intra_op_threads`` (default: the cores this process may run on), applies to each of its three
sessions; they are called one at a time, from one thread, so at most that many threads compute at once.
Output buffers are allocated once at ``max_batch`` and bound with I/O binding, so a call
allocates nothing on the host; a smaller batch binds the leading rows of the same buffers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from engines.backends.base import BackendBase, ChunkInput, ChunkOutput, FloatArray, host_array
from engines.backends.onnx_export import ExportManifest, read_export
from engines.errors import InputError, MissingDependencyError

logger = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cuda_provider_available() -> bool:
    """Whether this onnxruntime build has the CUDA execution provider."""
    return PROVIDERS["cuda"] in ort.get_available_providers()


class _BoundGraph:
    """One inference session with its output buffers, bound once at the maximum batch."""

    def __init__(
        self,
        path: Path,
        options: ort.SessionOptions,
        providers: list[str],
        outputs: dict[str, tuple[int, ...]],
    ) -> None:
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.buffers = {name: np.zeros(shape, dtype=np.float32) for name, shape in outputs.items()}
        self.binding = self.session.io_binding()

    def __call__(self, inputs: dict[str, FloatArray], batch: int) -> dict[str, FloatArray]:
        binding = self.binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array, dtype=np.float32))
        views = {name: buffer[:batch] for name, buffer in self.buffers.items()}
        for name, view in views.items():
            binding.bind_output(
                name=name,
                device_type="cpu",
                device_id=0,
                element_type=np.float32,
                shape=view.shape,
                buffer_ptr=view.ctypes.data,
            )
        self.session.run_with_iobinding(binding)
        return views


class OnnxRuntimeBackend(BackendBase):
    """Runs an ONNX export (see ``engines.backends.onnx_export``) with ONNX Runtime.

    Args:
        export_dir: folder of an ONNX export.
        device: ``cpu`` or ``cuda`` (needs onnxruntime-gpu).
        intra_op_threads: threads of each session's operator pool (default: ``available_cores()``).
        max_batch: most sessions a call (default: the export's shape; the export itself takes any).
    """

    def __init__(
        self,
        export_dir: Path,
        device: str = "cpu",
        intra_op_threads: int | None = None,
        max_batch: int | None = None,
    ) -> None:
        manifest: ExportManifest = read_export(export_dir)
        shape = manifest.stream_shape
        if max_batch is not None:
            shape = shape.with_max_batch(max_batch)
        super().__init__("onnxruntime-cuda" if device == "cuda" else "onnxruntime-cpu", shape)
        if device not in PROVIDERS:
            raise InputError(f"onnxruntime device {device!r}: use cpu or cuda")
        if device == "cuda" and not cuda_provider_available():
            raise MissingDependencyError(
                "onnxruntime has no CUDA execution provider here: "
                "install onnxruntime-gpu on a machine with CUDA"
            )
        self.device = torch.device("cuda" if device == "cuda" else "cpu")
        self.manifest = manifest
        self.export_dir = export_dir
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if intra_op_threads is not None and intra_op_threads < 1:
            raise InputError(f"{intra_op_threads} intra-op threads: need at least 1")
        options.intra_op_num_threads = intra_op_threads or available_cores()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle intra-op threads would spin after each call; with three sessions (and the rest of a
        # real-time server) on two cores, spinning threads steal the core the next call needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.options = options
        providers = [PROVIDERS[device]] + ([PROVIDERS["cpu"]] if device == "cuda" else [])
        shape, batch = self.shape, self.shape.max_batch
        files = {name: export_dir / graph.file for name, graph in manifest.graphs.items()}
        self._graphs = {
            "expressions": _BoundGraph(
                files["audio2expression"], options, providers, {"mouth": shape.expression_io(batch)[1]}
            ),
            "smoothing": _BoundGraph(
                files["smoothing"], options, providers, {"weights": shape.smoothing_io(batch)[1]}
            ),
            "renderer": _BoundGraph(
                files["renderer_chunk"], options, providers, shape.renderer_outputs(batch)
            ),
        }

    def expressions(self, audio: FloatArray) -> FloatArray:
        batch = self._check_expressions(audio)
        return self._graphs["expressions"]({"audio": audio}, batch)["mouth"]

    def smoothing_weights(self, mouth: FloatArray) -> FloatArray:
        batch = self._check_smoothing(mouth)
        return self._graphs["smoothing"]({"mouth": mouth}, batch)["weights"]

    def run(self, chunk: ChunkInput) -> ChunkOutput:
        batch = self._check_chunk(chunk)
        inputs = {name: host_array(value) for name, value in chunk.arrays().items()}
        outputs = self._graphs["renderer"](inputs, batch)
        return ChunkOutput(frames=outputs["frames"], features=outputs["features"])

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": str(self.device),
            "precision": self.manifest.precision,
            "onnxruntime": ort.__version__,
            "providers": self._graphs["renderer"].session.get_providers() if self._graphs else [],
            "graph_optimization_level": str(self.options.graph_optimization_level),
            "intra_op_threads": self.options.intra_op_num_threads,
            "inter_op_threads": self.options.inter_op_num_threads,
            "opset": self.manifest.opset,
            "export": str(self.export_dir),
            "shape": self.shape.to_dict(),
        }

    def close(self) -> None:
        self._graphs.clear()
        super().close()
