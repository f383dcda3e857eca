"""ONNX export of an avatar's streaming graphs, with a manifest of hashes, shapes and versions.

An export folder holds ``audio2expression.onnx``, ``smoothing.onnx`` and ``renderer_chunk.onnx``
(opset 18, fp32, named inputs and outputs; only the batch axis is dynamic, of any size, for
batching sessions: one export serves every ``max_batch``) and ``export.json``. The folder is
written beside itself under a temporary name and renamed when complete. Each graph passes
``onnx.checker`` and uses only operators that TensorRT 10's parser supports.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

import engines
from engines.backends.base import StreamShape
from engines.backends.graphs import CausalSmoothingWeights, Expressions, RendererChunk
from engines.backends.tensorrt_ops import TENSORRT_ONNX_OPS, TENSORRT_OPSET_RANGE
from engines.bundle import AvatarNetworks
from engines.errors import InputError, OutputError
from engines.files import atomic_directory, exclusive_lock, sha256_file

logger = logging.getLogger(__name__)

EXPORT_FORMAT = 1
OPSET = 18
MANIFEST = "export.json"
GRAPH_FILES = {
    "audio2expression": "audio2expression.onnx",
    "smoothing": "smoothing.onnx",
    "renderer_chunk": "renderer_chunk.onnx",
}


class GraphInfo(BaseModel):
    """One exported graph: its file, checksum, tensors (``batch`` marks the dynamic axis) and ops."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    sha256: str
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    operators: list[str]


class ExportManifest(BaseModel):
    """``export.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int
    created_with: str
    kind: str
    weights_digest: str
    shape: dict[str, int]
    opset: int
    precision: str
    versions: dict[str, str]
    graphs: dict[str, GraphInfo]

    @property
    def stream_shape(self) -> StreamShape:
        return StreamShape(**self.shape)


def weights_digest(networks: AvatarNetworks) -> str:
    """SHA-256 over every weight of the three networks (names, shapes and values) and the
    renderer's output sharpening."""
    digest = hashlib.sha256()
    for key in ("audio2expression", "renderer", "smoothing"):
        module: nn.Module = getattr(networks, key)
        for name, tensor in sorted(module.state_dict().items()):
            value = tensor.detach().to("cpu", torch.float32).contiguous()
            digest.update(f"{key}.{name}:{tuple(value.shape)}".encode())
            digest.update(value.numpy().tobytes())
    sharpening = networks.renderer.config.output_sharpening
    if sharpening:  # a fixed filter in the graph, not a weight; older exports had none
        digest.update(f"renderer.output_sharpening:{sharpening!r}".encode())
    return digest.hexdigest()


def onnx_export_dir(avatar_root: Path, shape: StreamShape) -> Path:
    """Where an avatar's ONNX export for ``shape`` lives: ``AVATAR/engines/onnx-<shape tag>``."""
    return avatar_root / "engines" / f"onnx-{shape.tag}"


def _graph_modules(
    networks: AvatarNetworks, shape: StreamShape
) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
    """Name → (module on the CPU in fp32, example inputs by name) for each graph."""
    cpu = copy.deepcopy(networks)
    for module in (cpu.audio2expression, cpu.renderer, cpu.smoothing):
        module.to("cpu", torch.float32).eval()
    batch = 1
    audio_in, _ = shape.expression_io(batch)
    mouth_in, _ = shape.smoothing_io(batch)
    return {
        "audio2expression": (Expressions(cpu.audio2expression), {"audio": torch.randn(audio_in)}),
        "smoothing": (CausalSmoothingWeights(cpu.smoothing), {"mouth": torch.randn(mouth_in)}),
        "renderer_chunk": (
            RendererChunk(cpu.renderer, shape),
            {name: torch.rand(size) for name, size in shape.renderer_inputs(batch).items()},
        ),
    }


OUTPUT_NAMES = {
    "audio2expression": ["mouth"],
    "smoothing": ["weights"],
    "renderer_chunk": ["frames", "features"],
}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter logs and warns a lot about things that do not concern us."""
    loggers = [
        logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    ]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _export_graph(module: nn.Module, inputs: dict[str, Any], outputs: list[str], path: Path) -> None:
    batch = torch.export.Dim("batch", min=1)
    dynamic = {name: {0: batch} for name in inputs}
    with _quiet_exporter():
        program = torch.onnx.export(
            module,
            tuple(inputs.values()),
            dynamo=True,
            opset_version=OPSET,
            input_names=list(inputs),
            output_names=outputs,
            dynamic_shapes=dynamic,
            optimize=True,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)


def _tensor_dims(value: onnx.ValueInfoProto) -> list[int | str]:
    dims: list[int | str] = []
    for dim in value.type.tensor_type.shape.dim:
        dims.append(dim.dim_value if dim.HasField("dim_value") else "batch")
    return dims


def check_graph(path: Path) -> tuple[onnx.ModelProto, list[str]]:
    """Validate an exported graph: ``onnx.checker`` and TensorRT's operator and opset support.

    Returns:
        The model and its sorted operator types.

    Raises:
        InputError: the graph is invalid or uses something TensorRT 10 cannot parse.
    """
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise InputError(f"{path.name}: invalid ONNX graph ({str(exc).splitlines()[0]})") from exc
    operators = sorted({node.op_type for node in model.graph.node})
    foreign = [f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")]
    unsupported = sorted(set(operators) - TENSORRT_ONNX_OPS)
    if foreign or unsupported:
        raise InputError(
            f"{path.name}: operators TensorRT 10 cannot parse: {sorted(set(foreign)) + unsupported}"
        )
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    low, high = TENSORRT_OPSET_RANGE
    if not low <= opset <= high:
        raise InputError(f"{path.name}: opset {opset} outside TensorRT 10's range {low}..{high}")
    return model, operators


def export_onnx(
    networks: AvatarNetworks, shape: StreamShape, out: Path, overwrite: bool = False
) -> ExportManifest:
    """Export the three streaming graphs of an avatar for ``shape`` into the folder ``out``.

    Raises:
        OutputError: ``out`` exists (without ``overwrite``) or cannot be written.
        InputError: an exported graph fails the ONNX or TensorRT checks.
    """
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: exists (use --overwrite to replace it)")
    with atomic_directory(out, replace=True) as partial:
        graphs: dict[str, GraphInfo] = {}
        for name, (module, inputs) in _graph_modules(networks, shape).items():
            path = partial / GRAPH_FILES[name]
            logger.info("exporting %s", path.name)
            _export_graph(module, inputs, OUTPUT_NAMES[name], path)
            model, operators = check_graph(path)
            graphs[name] = GraphInfo(
                file=GRAPH_FILES[name],
                sha256=sha256_file(path),
                inputs={value.name: _tensor_dims(value) for value in model.graph.input},
                outputs={value.name: _tensor_dims(value) for value in model.graph.output},
                operators=operators,
            )
        manifest = ExportManifest(
            format=EXPORT_FORMAT,
            created_with=f"stableface {engines.__version__}",
            kind="onnx",
            weights_digest=weights_digest(networks),
            shape=shape.to_dict(),
            opset=OPSET,
            precision="fp32",
            versions={"torch": torch.__version__, "onnx": onnx.__version__},
            graphs=graphs,
        )
        (partial / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def read_export(folder: Path, verify: bool = True) -> ExportManifest:
    """Read ``export.json`` of an ONNX export and check its files' checksums.

    Raises:
        InputError: missing, of another format, invalid, or a file altered or missing.
    """
    path = folder / MANIFEST
    if not path.is_file():
        raise InputError(f"{folder}: not an ONNX export (no {MANIFEST})")
    try:
        manifest = ExportManifest.model_validate_json(path.read_text())
    except (OSError, ValidationError) as exc:
        raise InputError(f"{path}: unreadable or invalid export manifest") from exc
    if manifest.format != EXPORT_FORMAT:
        raise InputError(f"{folder}: export format {manifest.format}, this version reads {EXPORT_FORMAT}")
    if verify:
        for graph in manifest.graphs.values():
            file = folder / graph.file
            if not file.is_file() or sha256_file(file) != graph.sha256:
                raise InputError(f"{folder}: {graph.file} is missing or does not match its checksum")
    return manifest


def _current_export(folder: Path, digest: str, shape: StreamShape) -> ExportManifest | None:
    """The export in ``folder`` if it is whole and matches these weights and shapes."""
    if not (folder / MANIFEST).is_file():
        return None
    try:
        manifest = read_export(folder)
    except InputError as exc:
        logger.warning("%s, exporting again", exc)
        return None
    if manifest.weights_digest == digest and manifest.stream_shape.same_graphs(shape):
        return manifest
    logger.info("%s: export is stale (other weights or shapes), exporting again", folder)
    return None


def ensure_onnx_export(networks: AvatarNetworks, shape: StreamShape, folder: Path) -> ExportManifest:
    """Reuse the export in ``folder`` when it matches these weights and shapes, else (re)export.

    Processes that start on the same avatar at once (render workers, several servers) take turns:
    the first exports, the others wait and reuse its export.

    Raises:
        OutputError: ``folder`` cannot be written (or locked).
    """
    digest = weights_digest(networks)
    current = _current_export(folder, digest, shape)
    if current is not None:  # no lock needed to reuse one (a read-only install can)
        return current
    with exclusive_lock(folder):
        current = _current_export(folder, digest, shape)  # made while this process waited?
        if current is not None:
            return current
        return export_onnx(networks, shape, folder, overwrite=True)
