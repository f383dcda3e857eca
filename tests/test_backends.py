"""Inference backends: ONNX Runtime matches torch, the exported renderer is block-causal, shapes are
fixed, exports are checked and reused, ``auto`` picks what this machine can run, TensorRT is
isolated behind its lazy import."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.backends import (
    ChunkInput,
    OnnxRuntimeBackend,
    StreamShape,
    TorchBackend,
    available_backends,
    ensure_onnx_export,
    export_onnx,
    load_backend,
    read_export,
)
from engines.backends.base import host_array
from engines.backends.parity import max_differences, random_inputs
from engines.backends.tensorrt_backend import engine_cache_key
from engines.backends.tensorrt_ops import TENSORRT_ONNX_OPS
from engines.bundle import AvatarBundle, AvatarNetworks, build_networks
from engines.errors import InputError, MissingDependencyError, OutputError
from engines.nets import PRESETS
from engines.nets.attention import block_causal_mask
from engines.nets.smoothing import apply_smoothing_weights
from stableface.cli import main

TOLERANCE = 1e-3
# The tiny preset with the output sharpening on: the exports must carry that filter too.
CONFIG = PRESETS["tiny"].model_copy(
    update={"renderer": PRESETS["tiny"].renderer.model_copy(update={"output_sharpening": 1.0})}
)
HAS_TENSORRT_GPU = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def _random_networks(seed: int = 0) -> AvatarNetworks:
    """Tiny networks with every weight perturbed, so that zero-initialised layers (audio fusion,
    the dependency module's output projection) take part in the comparison."""
    torch.manual_seed(seed)
    networks = build_networks(CONFIG)
    with torch.no_grad():
        for module in (networks.audio2expression, networks.renderer, networks.smoothing):
            for parameter in module.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
            module.eval()
    return networks


@pytest.fixture(scope="module")
def networks() -> AvatarNetworks:
    return _random_networks()


@pytest.fixture(scope="module", params=[2, 4], ids=["chunk2", "chunk4"])
def exported(
    request: pytest.FixtureRequest, networks: AvatarNetworks, tmp_path_factory: pytest.TempPathFactory
):
    shape = StreamShape.for_config(CONFIG, chunk_frames=request.param, max_batch=2)
    folder = tmp_path_factory.mktemp("export") / "onnx"
    manifest = export_onnx(networks, shape, folder)
    return shape, folder, manifest


def test_onnxruntime_matches_torch_for_every_network(exported, networks: AvatarNetworks) -> None:
    shape, folder, _ = exported
    with TorchBackend(networks, shape) as reference, OnnxRuntimeBackend(folder) as onnx:
        for batch in (1, 2):
            differences = max_differences(reference, onnx, batch=batch, seed=batch)
            assert max(differences.values()) <= TOLERANCE, differences
        frames = onnx.run(random_inputs(shape, 1, seed=5)[2]).frames
        assert frames.min() >= -1 and frames.max() <= 1 and frames.std() > 0.01  # real, varied outputs


def test_a_chunk_equals_the_last_frames_of_the_block_causal_window(
    exported, networks: AvatarNetworks
) -> None:
    shape, folder, _ = exported
    past, chunk, size = shape.past_frames, shape.chunk_frames, shape.image_size
    window = past + chunk
    generator = torch.Generator().manual_seed(1)
    eroded = torch.rand(1, window, 3, size, size, generator=generator) * 2 - 1
    shapes = torch.rand(1, window, 4, size, size, generator=generator)
    audio = torch.randn(1, window, shape.audio_dim, generator=generator)
    renderer = networks.renderer
    with torch.no_grad():
        mask = block_causal_mask(window, chunk, renderer.tokens_per_frame)
        expected = renderer(eroded, shapes, audio, mask)[0, past:].numpy()
        past_features = renderer.encode(eroded[0, :past], shapes[0, :past], audio[0, :past])[None].numpy()
    request = ChunkInput(
        past_features, eroded[:, past:].numpy(), shapes[:, past:].numpy(), audio[:, past:].numpy()
    )
    for backend in (TorchBackend(networks, shape), OnnxRuntimeBackend(folder)):
        with backend:
            assert np.abs(backend.run(request).frames[0] - expected).max() <= TOLERANCE, backend.name


def _stream(backend: OnnxRuntimeBackend, chunks: list[ChunkInput]) -> list[np.ndarray]:
    """Run chunks in order, feeding each chunk's features into the next one's past."""
    shape = backend.shape
    cache = np.zeros(
        (1, shape.past_frames, shape.feature_channels, shape.feature_size, shape.feature_size), np.float32
    )
    frames = []
    for chunk in chunks:
        chunk.past_features = cache
        result = backend.run(chunk)
        frames.append(host_array(result.frames).copy())
        cache = np.concatenate([cache, host_array(result.features)], axis=1)[:, shape.chunk_frames :].copy()
    return frames


def test_the_exported_renderer_never_looks_at_a_later_chunk(exported) -> None:
    shape, folder, _ = exported
    chunks = [random_inputs(shape, 1, seed=10 + i)[2] for i in range(4)]
    altered = [random_inputs(shape, 1, seed=10 + i)[2] for i in range(4)]
    altered[-1].shapes = np.ascontiguousarray(altered[-1].shapes[:, ::-1])
    altered[-1].audio = altered[-1].audio + 3
    with OnnxRuntimeBackend(folder) as backend:
        original, changed = _stream(backend, chunks), _stream(backend, altered)
        for before, after in zip(original[:-1], changed[:-1], strict=True):
            np.testing.assert_array_equal(before, after)
        assert np.abs(original[-1] - changed[-1]).max() > 0.01
        # and the past is really used: other cached features change the new frames
        request = random_inputs(shape, 1, seed=3)[2]
        first = host_array(backend.run(request).frames).copy()
        request.past_features = request.past_features + 1
        assert np.abs(host_array(backend.run(request).frames) - first).max() > 1e-3


def test_backends_refuse_other_shapes_in_one_clear_error(exported, networks: AvatarNetworks) -> None:
    shape, folder, _ = exported
    other = StreamShape.for_config(CONFIG, chunk_frames=shape.chunk_frames + 1)
    wrong_chunk = random_inputs(other, 1)[2]
    for backend in (TorchBackend(networks, shape), OnnxRuntimeBackend(folder)):
        with pytest.raises(InputError, match="fixed shape"):
            backend.run(wrong_chunk)
        with pytest.raises(InputError, match=r"batch 3 outside 1\.\.2"):
            backend.expressions(np.zeros((3, shape.audio_frames, shape.audio_dim), np.float32))
        backend.close()
        with pytest.raises(InputError, match="closed"):
            backend.smoothing_weights(np.zeros((1, shape.smoothing_frames, shape.mouth_dims), np.float32))


def test_causal_smoothing_through_onnx_equals_the_module(exported, networks: AvatarNetworks) -> None:
    shape, folder, _ = exported
    _, mouth, _ = random_inputs(shape, 1, seed=4)
    shapes = np.random.default_rng(4).random((1, shape.smoothing_frames, 4, 8, 8)).astype(np.float32)
    with OnnxRuntimeBackend(folder) as backend:
        weights = backend.smoothing_weights(mouth)
        smoothed = apply_smoothing_weights(shapes, weights, networks.smoothing.offsets(causal=True))
    np.testing.assert_allclose(weights.sum(-1), 1, atol=1e-5)
    with torch.no_grad():
        expected = networks.smoothing(torch.from_numpy(shapes), torch.from_numpy(mouth), causal=True).numpy()
    assert np.abs(smoothed - expected).max() <= TOLERANCE


def test_the_export_is_checked_hashed_and_tensorrt_friendly(exported) -> None:
    shape, folder, manifest = exported
    assert manifest.opset >= 17 and manifest.shape == shape.to_dict()
    assert set(manifest.graphs) == {"audio2expression", "smoothing", "renderer_chunk"}
    renderer = manifest.graphs["renderer_chunk"]
    assert renderer.inputs["eroded"] == ["batch", shape.chunk_frames, 3, shape.image_size, shape.image_size]
    assert list(renderer.outputs) == ["frames", "features"]
    for graph in manifest.graphs.values():
        assert set(graph.operators) <= TENSORRT_ONNX_OPS
        assert graph.inputs and all(dims[0] == "batch" for dims in graph.inputs.values())
        assert all(isinstance(d, int) for dims in graph.inputs.values() for d in dims[1:])
    assert read_export(folder) == manifest


@pytest.mark.parametrize("exported", [2], indirect=True, ids=["chunk2"])
def test_exports_are_reused_refreshed_and_never_half_written(
    exported, networks: AvatarNetworks, tmp_path: Path
) -> None:
    shape, made, first = exported
    folder = tmp_path / "onnx"
    shutil.copytree(made, folder)
    stamp = (folder / "renderer_chunk.onnx").stat().st_mtime_ns
    assert ensure_onnx_export(networks, shape, folder) == first
    assert (folder / "renderer_chunk.onnx").stat().st_mtime_ns == stamp
    with pytest.raises(OutputError, match="exists"):
        export_onnx(networks, shape, folder)
    changed = copy.deepcopy(networks)
    with torch.no_grad():
        next(changed.renderer.parameters()).add_(1)
    assert ensure_onnx_export(changed, shape, folder).weights_digest != first.weights_digest
    graph = folder / "smoothing.onnx"
    graph.write_bytes(graph.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(InputError, match="checksum"):
        read_export(folder)
    left = [p.name for p in tmp_path.iterdir() if p.name != ".onnx.lock"]  # the lock file stays
    assert left == ["onnx"]  # no partial folders left behind


def test_unwritable_export_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write"):
        export_onnx(_random_networks(), StreamShape.for_config(CONFIG), blocker / "onnx")


def test_auto_picks_the_best_backend_this_machine_has(tiny_avatar: Path) -> None:
    found = available_backends()
    assert found[-2:] == ["onnxruntime-cpu", "torch-cpu"]
    if not torch.cuda.is_available():
        assert found == ["onnxruntime-cpu", "torch-cpu"]
    bundle = AvatarBundle.load(tiny_avatar)
    with load_backend(bundle) as backend:
        assert backend.name == found[0]
        assert backend.shape == StreamShape.for_config(bundle.config)
    assert (tiny_avatar / "engines").is_dir()
    with load_backend(bundle, "torch-cpu") as backend:
        assert backend.name == "torch-cpu" and backend.describe()["device"] == "cpu"
    with pytest.raises(InputError, match="unknown backend"):
        load_backend(bundle, "onnxruntime")  # one name per backend: no short forms
    with pytest.raises(InputError, match="unknown backend"):
        load_backend(bundle, "tensorflow")
    with pytest.raises(InputError, match="fp32 only"):
        load_backend(bundle, "onnxruntime-cpu", precision="fp16")


@pytest.mark.skipif(
    HAS_TENSORRT_GPU, reason="TensorRT and a GPU are present: the real build test runs instead"
)
def test_tensorrt_without_tensorrt_names_the_extra(exported) -> None:
    from engines.backends.tensorrt_backend import TensorRTBackend

    _, folder, _ = exported
    with pytest.raises(MissingDependencyError, match=r"pip install -e \.\[tensorrt\]|NVIDIA GPU"):
        TensorRTBackend(folder)


def test_tensorrt_cache_key_changes_with_everything_that_changes_the_engine() -> None:
    shape = StreamShape.for_config(CONFIG)
    base = ("a" * 64, "NVIDIA H100 80GB HBM3", "10.9.0", "fp16", shape)
    keys = {engine_cache_key(*base)}
    for index, value in enumerate(
        ["b" * 64, "NVIDIA H200", "10.10.0", "fp32", StreamShape.for_config(CONFIG, 3)]
    ):
        changed = list(base)
        changed[index] = value
        keys.add(engine_cache_key(*changed))  # type: ignore[arg-type]
    assert len(keys) == 6
    assert engine_cache_key(*base) == engine_cache_key(*base)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TENSORRT_GPU, reason="needs TensorRT 10+ and an NVIDIA GPU")
def test_tensorrt_matches_torch_and_caches_its_engines(exported, networks: AvatarNetworks) -> None:
    from engines.backends.tensorrt_backend import TensorRTBackend

    shape, folder, _ = exported
    with TorchBackend(networks, shape) as reference, TensorRTBackend(folder, "fp32") as engine:
        differences = max_differences(reference, engine, batch=2)
        assert max(differences.values()) <= 1e-2, differences
        plans = dict(engine.plans)
    stamps = {name: path.stat().st_mtime_ns for name, path in plans.items()}
    with TensorRTBackend(folder, "fp32") as again:
        assert {name: path.stat().st_mtime_ns for name, path in again.plans.items()} == stamps


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("options", [{"precision": "fp16"}, {"precision": "fp32", "cuda_graphs": True}])
def test_torch_cuda_matches_the_cpu(exported, networks: AvatarNetworks, options: dict[str, object]) -> None:
    shape, _, _ = exported
    with TorchBackend(networks, shape) as cpu, TorchBackend(networks, shape, "cuda", **options) as gpu:  # type: ignore[arg-type]
        differences = max_differences(cpu, gpu, batch=2)
    assert max(differences.values()) <= (2e-2 if options["precision"] == "fp16" else 1e-3), differences


def test_export_command(tiny_avatar: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tiny_avatar), "--chunk", "2"]) == 0
    out = capsys.readouterr().out
    assert "onnx export:" in out and "onnxruntime vs torch" in out
    folder = next((tiny_avatar / "engines").glob("onnx-c2-*"))
    manifest = json.loads((folder / "export.json").read_text())
    assert manifest["shape"]["chunk_frames"] == 2 and manifest["versions"]["torch"] == torch.__version__
    assert main(["export", str(tiny_avatar), "--chunk", "2"]) == 0
    assert "up to date" in capsys.readouterr().out
    for argv, message in [
        (["--precision", "fp16"], "fp32"),
        (["--backend", "tensorrt"], "tensorrt" if not HAS_TENSORRT_GPU else ""),
        (["--past", "-1"], "past frames"),
    ]:
        if HAS_TENSORRT_GPU and argv[0] == "--backend":
            continue
        assert main(["export", str(tiny_avatar), *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err and "Traceback" not in err
    assert main(["export", str(tiny_avatar.parent / "nothing")]) == 1
    assert "not an avatar" in capsys.readouterr().err


def test_the_graphs_run_in_half_precision_without_mixing_dtypes(networks: AvatarNetworks) -> None:
    """What torch-cuda does in fp16, checked here in bfloat16 on the CPU: no float32 leaks in."""
    import copy

    from engines.backends.graphs import Expressions, RendererChunk

    shape = StreamShape.for_config(CONFIG, chunk_frames=2)
    half = copy.deepcopy(networks)
    renderer = RendererChunk(half.renderer, shape).to(torch.bfloat16)
    expressions = Expressions(half.audio2expression).to(torch.bfloat16)
    audio, _, chunk = random_inputs(shape, 1, seed=2)
    with torch.inference_mode():
        frames, features = renderer(
            *(torch.from_numpy(a).to(torch.bfloat16) for a in chunk.arrays().values())
        )
        mouth = expressions(torch.from_numpy(audio).to(torch.bfloat16))
        reference = RendererChunk(networks.renderer, shape)(
            *(torch.from_numpy(a) for a in chunk.arrays().values())
        )
    assert frames.dtype == features.dtype == mouth.dtype == torch.bfloat16
    assert (frames.float() - reference[0]).abs().max() < 0.1


def test_one_thread_setting_per_onnxruntime_backend(tiny_avatar: Path) -> None:
    from engines.backends.onnxruntime_backend import available_cores

    bundle = AvatarBundle.load(tiny_avatar)
    with load_backend(bundle, "onnxruntime-cpu", intra_op_threads=1) as backend:
        assert backend.name == "onnxruntime-cpu" and backend.describe()["intra_op_threads"] == 1
    with load_backend(bundle, "onnxruntime-cpu") as backend:
        assert backend.describe()["intra_op_threads"] == available_cores()
    with pytest.raises(InputError, match="intra-op threads"):
        load_backend(bundle, "onnxruntime-cpu", intra_op_threads=0)


def test_an_open_engine_keeps_blas_on_one_thread_and_closing_the_last_restores_it(
    tiny_avatar: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    from realtime import engine
    from realtime.engine import AvatarEngine

    def blas_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    monkeypatch.setattr(engine, "_BLAS", engine._single_threaded_blas())  # engines other tests left open
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        first = AvatarEngine.load(tiny_avatar, "torch-cpu")
        second = AvatarEngine.load(tiny_avatar, "torch-cpu")
        assert blas_threads() == {1}
        first.close()
        first.close()  # idempotent: does not release the second engine's hold
        assert blas_threads() == {1}
        second.close()
        assert blas_threads() == before


def test_the_export_key_changes_with_the_output_sharpening(networks: AvatarNetworks) -> None:
    """The filter is no weight, yet an export made without it must not be reused with it."""
    from engines.backends.onnx_export import weights_digest

    plain = build_networks(PRESETS["tiny"])
    for key in ("audio2expression", "renderer", "smoothing"):
        getattr(plain, key).load_state_dict(getattr(networks, key).state_dict())
    assert weights_digest(plain) != weights_digest(networks)
