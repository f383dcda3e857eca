"""Inference backends: one protocol (``Backend``), implementations for torch, ONNX Runtime and
TensorRT, the ONNX export they share, and ``load_backend`` to pick one.

The TensorRT backend is imported lazily (``engines.backends.tensorrt_backend``) so that this
package loads without TensorRT.
"""

from engines.backends.base import Backend, BackendBase, ChunkInput, ChunkOutput, StreamShape
from engines.backends.onnx_export import (
    ExportManifest,
    ensure_onnx_export,
    export_onnx,
    onnx_export_dir,
    read_export,
)
from engines.backends.onnxruntime_backend import OnnxRuntimeBackend
from engines.backends.select import (
    AUTO_ORDER,
    CHOICES,
    available_backends,
    load_backend,
    load_networks_backend,
)
from engines.backends.torch_backend import TorchBackend

__all__ = [
    "AUTO_ORDER",
    "CHOICES",
    "Backend",
    "BackendBase",
    "ChunkInput",
    "ChunkOutput",
    "ExportManifest",
    "OnnxRuntimeBackend",
    "StreamShape",
    "TorchBackend",
    "available_backends",
    "ensure_onnx_export",
    "export_onnx",
    "load_backend",
    "load_networks_backend",
    "onnx_export_dir",
    "read_export",
]
