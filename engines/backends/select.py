"""Choosing and loading a backend for an avatar: ``auto`` takes the best one this machine can run.

Order of preference: torch-cuda > tensorrt > onnxruntime-cuda > onnxruntime-cpu > torch-cpu. On a
GPU, torch-cuda comes first: it runs the batch buckets as CUDA graphs and keeps frames on the
device from the renderer through paste-back (the render scheduler's path); TensorRT has the same
interface but has never run on this project's machines, and ONNX Runtime CUDA copies every call's
frames to the host.
ONNX-based backends use the avatar's export for the requested shapes, exporting it first when it
is missing or stale (into ``AVATAR/engines``, or a temporary folder when the avatar is read-only).
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from pathlib import Path

import torch

from engines.backends.base import Backend, BackendName, Precision, StreamShape
from engines.backends.onnx_export import ensure_onnx_export, onnx_export_dir, weights_digest
from engines.backends.onnxruntime_backend import OnnxRuntimeBackend, cuda_provider_available
from engines.backends.torch_backend import TorchBackend
from engines.bundle import AvatarBundle, AvatarNetworks
from engines.errors import InputError, OutputError, StableFaceError

logger = logging.getLogger(__name__)

AUTO_ORDER: tuple[BackendName, ...] = (
    "torch-cuda",
    "tensorrt",
    "onnxruntime-cuda",
    "onnxruntime-cpu",
    "torch-cpu",
)
CHOICES = ("auto", *AUTO_ORDER)


def available_backends() -> list[BackendName]:
    """The backends this machine can run, best first."""
    cuda = torch.cuda.is_available()
    found: list[BackendName] = []
    if cuda:
        found.append("torch-cuda")
    if cuda and importlib.util.find_spec("tensorrt") is not None:
        found.append("tensorrt")
    if cuda and cuda_provider_available():
        found.append("onnxruntime-cuda")
    found += ["onnxruntime-cpu", "torch-cpu"]
    return found


def resolve_name(choice: str) -> BackendName:
    """The backend named ``choice`` (``auto`` excluded).

    Raises:
        InputError: an unknown name.
    """
    if choice in AUTO_ORDER:
        return choice
    raise InputError(f"unknown backend {choice!r}; choose one of {', '.join(CHOICES)}")


def export_folder(networks: AvatarNetworks, shape: StreamShape, avatar_root: Path | None) -> Path:
    """The ONNX export of ``networks`` for ``shape``, made if missing or stale."""
    if avatar_root is not None:
        folder = onnx_export_dir(avatar_root, shape)
        try:
            ensure_onnx_export(networks, shape, folder)
            return folder
        except OutputError as exc:
            logger.warning("%s; exporting to a temporary folder instead", exc)
    folder = (
        Path(tempfile.gettempdir())
        / "stableface-exports"
        / weights_digest(networks)[:16]
        / f"onnx-{shape.tag}"
    )
    ensure_onnx_export(networks, shape, folder)
    return folder


def load_networks_backend(
    name: BackendName,
    networks: AvatarNetworks,
    shape: StreamShape,
    avatar_root: Path | None = None,
    precision: Precision | None = None,
    intra_op_threads: int | None = None,
) -> Backend:
    """Load one named backend for a set of networks (``intra_op_threads``: see ``load_backend``).

    Raises:
        StableFaceError: the backend cannot run here or the precision does not apply to it.
    """
    if name in ("torch-cpu", "onnxruntime-cpu") and precision not in (None, "fp32"):
        raise InputError(f"{name} runs fp32 only; fp16 and bf16 are for GPU backends")
    if name == "torch-cpu":
        return TorchBackend(networks, shape, "cpu")
    if name == "torch-cuda":
        return TorchBackend(networks, shape, "cuda", precision or "fp16", cuda_graphs=True)
    folder = export_folder(networks, shape, avatar_root)
    if name == "onnxruntime-cpu":
        return OnnxRuntimeBackend(folder, "cpu", intra_op_threads, shape.max_batch)
    if name == "onnxruntime-cuda":
        if precision not in (None, "fp32"):
            raise InputError("onnxruntime-cuda runs the fp32 export; use tensorrt or torch-cuda for fp16")
        return OnnxRuntimeBackend(folder, "cuda", intra_op_threads, shape.max_batch)
    from engines.backends.tensorrt_backend import TensorRTBackend

    if precision == "bf16":
        raise InputError("tensorrt builds fp16 or fp32 engines")
    return TensorRTBackend(folder, precision or "fp16", max_batch=shape.max_batch)


def load_backend(
    bundle: AvatarBundle,
    choice: str = "auto",
    shape: StreamShape | None = None,
    precision: Precision | None = None,
    intra_op_threads: int | None = None,
) -> Backend:
    """Load the backend ``choice`` (or the best available, ``auto``) for an avatar.

    Args:
        bundle: a loaded avatar.
        choice: ``auto`` or a backend name (``AUTO_ORDER``, the same names as ``Backend.name``).
        shape: fixed shapes (default: the avatar's streaming config).
        precision: compute precision (default: fp16 on GPUs, fp32 on the CPU).
        intra_op_threads: operator threads of the ONNX Runtime backends, shared setting of the
            avatar's three sessions (default: the cores this process may run on). Torch's thread
            pool is process-wide and left as it is.

    Raises:
        StableFaceError: the chosen backend cannot run here (``auto`` falls through to the next).
    """
    shape = shape or StreamShape.for_config(bundle.config)
    if choice != "auto":
        return load_networks_backend(
            resolve_name(choice), bundle.networks, shape, bundle.root, precision, intra_op_threads
        )
    errors: list[str] = []
    for name in available_backends():
        try:
            backend = load_networks_backend(
                name, bundle.networks, shape, bundle.root, precision, intra_op_threads
            )
        except StableFaceError as exc:
            logger.warning("backend %s unavailable: %s", name, exc)
            errors.append(f"{name}: {exc}")
            continue
        logger.info("backend: %s", name)
        return backend
    raise StableFaceError("no backend could be loaded: " + "; ".join(errors))
