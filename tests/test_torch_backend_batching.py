"""The torch backend batches sessions: bucketed batch sizes, a batch equals its rows run alone,
tensors and numpy arrays are the same input, padding to a bucket leaves the real rows alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backends import CONFIG, _random_networks

from engines.backends import ChunkInput, StreamShape, TorchBackend
from engines.backends.base import host_array
from engines.backends.graphs import Expressions, RendererChunk
from engines.backends.parity import random_inputs
from engines.backends.torch_backend import BucketedCall, Float32Outputs, compute_dtypes
from engines.bundle import AvatarNetworks, build_networks
from engines.errors import InputError

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def networks() -> AvatarNetworks:
    return _random_networks()


@pytest.fixture(scope="module")
def shape() -> StreamShape:
    return StreamShape.for_config(CONFIG, chunk_frames=2, max_batch=4)


@pytest.fixture(scope="module")
def backend(networks: AvatarNetworks, shape: StreamShape) -> TorchBackend:
    return TorchBackend(networks, shape)


def _row(chunk: ChunkInput, row: int) -> ChunkInput:
    arrays = {name: np.ascontiguousarray(value[row : row + 1]) for name, value in chunk.arrays().items()}
    return ChunkInput(**arrays)


@pytest.mark.parametrize(
    ("max_batch", "buckets"), [(1, (1,)), (4, (1, 2, 4)), (6, (1, 2, 4, 6)), (8, (1, 2, 4, 8))]
)
def test_buckets_are_powers_of_two_and_max_batch(
    networks: AvatarNetworks, max_batch: int, buckets: tuple[int, ...]
) -> None:
    shape = StreamShape.for_config(CONFIG, chunk_frames=2, max_batch=max_batch)
    with TorchBackend(networks, shape) as backend:
        assert backend.batch_buckets == buckets
        assert backend.describe()["batch_buckets"] == list(buckets)
        assert [backend.bucket_for(n) for n in range(1, max_batch + 1)] == [
            min(b for b in buckets if b >= n) for n in range(1, max_batch + 1)
        ]
        for outside in (0, max_batch + 1):
            with pytest.raises(InputError, match="outside"):
                backend.bucket_for(outside)


def test_a_batch_equals_its_rows_run_one_by_one(backend: TorchBackend, shape: StreamShape) -> None:
    audio, mouth, chunk = random_inputs(shape, 3, seed=4)
    batched = backend.run(chunk)
    frames, features = host_array(batched.frames).copy(), host_array(batched.features).copy()
    batched_mouth = backend.expressions(audio).copy()
    batched_weights = backend.smoothing_weights(mouth).copy()
    assert isinstance(batched.frames, np.ndarray) and frames.shape == (3, 2, 3, 64, 64)
    assert frames.std() > 0.01  # real, varied outputs
    for row in range(3):
        alone = backend.run(_row(chunk, row))
        assert np.abs(host_array(alone.frames)[0] - frames[row]).max() <= TOLERANCE
        assert np.abs(host_array(alone.features)[0] - features[row]).max() <= TOLERANCE
        assert np.abs(backend.expressions(audio[row : row + 1])[0] - batched_mouth[row]).max() <= TOLERANCE
        weights = backend.smoothing_weights(mouth[row : row + 1])[0]
        assert np.abs(weights - batched_weights[row]).max() <= TOLERANCE
    # and rows differ from each other, so the comparison could fail
    assert np.abs(frames[0] - frames[1]).max() > 1e-3


def test_tensors_in_equal_numpy_in(backend: TorchBackend, shape: StreamShape) -> None:
    _, _, chunk = random_inputs(shape, 2, seed=7)
    expected = backend.run(chunk)
    frames, features = host_array(expected.frames).copy(), host_array(expected.features).copy()
    # tensors as a caller builds them: views into larger tensors, one float64 array among them
    tensors = {
        name: torch.from_numpy(np.concatenate([value, value])) for name, value in chunk.arrays().items()
    }
    given = ChunkInput(
        past_features=tensors["past_features"][2:],
        eroded=tensors["eroded"][:2],
        shapes=tensors["shapes"][:2].clone(),
        audio=np.asarray(chunk.audio, np.float64),
    )
    result = backend.run(given)
    assert isinstance(result.frames, np.ndarray)  # the CPU backend answers in host arrays
    np.testing.assert_array_equal(host_array(result.frames), frames)
    np.testing.assert_array_equal(host_array(result.features), features)


class _Recorder(torch.nn.Module):
    """Wraps a module and keeps a copy of every batch of inputs it is called with."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self.calls: list[list[torch.Tensor]] = []

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.calls.append([tensor.clone() for tensor in inputs])
        result: tuple[torch.Tensor, ...] = self.module(*inputs)
        return result


def test_padding_to_a_bucket_leaves_the_real_rows_unchanged(networks: AvatarNetworks) -> None:
    shape = StreamShape.for_config(CONFIG, chunk_frames=2, max_batch=4)
    module = Float32Outputs(RendererChunk(networks.renderer, shape).eval())
    recorder = _Recorder(module)
    rows = [size[1:] for size in shape.renderer_inputs(1).values()]
    call = BucketedCall(recorder, rows, torch.float32, torch.device("cpu"), shape.batch_buckets)
    full = [torch.from_numpy(a) for a in random_inputs(shape, 4, seed=1)[2].arrays().values()]
    call(*full)  # fills every row of the static buffers
    three = [torch.from_numpy(a) for a in random_inputs(shape, 3, seed=2)[2].arrays().values()]
    frames, features = call(*three)
    seen = recorder.calls[-1]
    assert [tensor.shape[0] for tensor in seen] == [4, 4, 4, 4]  # ran at the bucket
    for tensor, given in zip(seen, three, strict=True):
        assert torch.equal(tensor[:3], given)
        assert not tensor[3:].any()  # the earlier call's row was zeroed
    assert frames.shape[0] == features.shape[0] == 3
    with torch.inference_mode():
        expected_frames, expected_features = module(*three)
    assert (frames - expected_frames).abs().max() <= TOLERANCE
    assert (features - expected_features).abs().max() <= TOLERANCE
    one = [tensor[:1] for tensor in three]
    [frames_one, _] = call(*one)
    assert recorder.calls[-1][0].shape[0] == 1 and (frames_one - expected_frames[:1]).abs().max() <= TOLERANCE
    with pytest.raises(InputError, match="outside"):
        call(*[torch.cat([t, t[:1]]) for t in full])  # 5 rows: more than the largest bucket


def test_padded_half_precision_buffers_cast_in_and_answer_float32(networks: AvatarNetworks) -> None:
    """What torch-cuda does in bf16, on the CPU: float32 inputs cast into bf16 static buffers,
    outputs cast back to float32; the smoothing computation stays float32."""
    assert compute_dtypes("bf16") == {
        "renderer": torch.bfloat16,
        "expressions": torch.bfloat16,
        "smoothing": torch.float32,
    }
    shape = StreamShape.for_config(CONFIG, chunk_frames=2, max_batch=4)
    expressions = Expressions(build_networks(CONFIG).audio2expression).eval().to(torch.bfloat16)
    call = BucketedCall(
        Float32Outputs(expressions),
        [shape.expression_io(1)[0][1:]],
        torch.bfloat16,
        torch.device("cpu"),
        shape.batch_buckets,
        warmup_calls=1,
    )
    audio = torch.from_numpy(random_inputs(shape, 3, seed=3)[0])
    [mouth] = call(audio)
    assert call.static_inputs[0].dtype == torch.bfloat16 and mouth.dtype == torch.float32
    with torch.inference_mode():
        expected = expressions(audio.to(torch.bfloat16)).float()
    assert mouth.shape == expected.shape and (mouth - expected).abs().max() <= 1e-2


def test_cpu_backend_refuses_gpu_only_options(networks: AvatarNetworks, shape: StreamShape) -> None:
    for options in ({"cuda_graphs": True}, {"compile": True}, {"precision": "fp16"}):
        with pytest.raises(InputError, match="CPU"):
            TorchBackend(networks, shape, "cpu", **options)
    with pytest.raises(InputError, match="cuda"):
        BucketedCall(torch.nn.Identity(), [(1,)], torch.float32, torch.device("cpu"), (1,), graphs=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "options",
    [
        {"precision": "fp32"},
        {"precision": "fp32", "cuda_graphs": True},
        {"precision": "fp16", "cuda_graphs": True},
    ],
)
def test_cuda_batches_stay_on_the_device_and_match_the_cpu(
    networks: AvatarNetworks, shape: StreamShape, backend: TorchBackend, options: dict[str, object]
) -> None:
    tolerance = 2e-2 if options["precision"] == "fp16" else 1e-3
    audio, mouth, chunk = random_inputs(shape, 3, seed=5)
    expected = host_array(backend.run(chunk).frames).copy()
    with TorchBackend(networks, shape, "cuda", **options) as gpu:  # type: ignore[arg-type]
        result = gpu.run(chunk)
        assert isinstance(result.frames, torch.Tensor) and result.frames.device == gpu.device
        assert result.frames.dtype == torch.float32 and result.frames.shape[0] == 3
        assert np.abs(host_array(result.frames) - expected).max() <= tolerance
        on_device = ChunkInput(
            **{name: torch.from_numpy(a).to(gpu.device) for name, a in chunk.arrays().items()}
        )
        assert np.abs(host_array(gpu.run(on_device).frames) - expected).max() <= tolerance
        for row in range(3):
            alone = host_array(gpu.run(_row(chunk, row)).frames)[0]
            assert np.abs(alone - expected[row]).max() <= tolerance
        assert gpu.expressions(audio).shape == (3, *shape.expression_io(1)[1][1:])
        assert gpu.smoothing_weights(mouth).dtype == np.float32
        if options.get("cuda_graphs"):
            assert gpu.describe()["padded_batches"] is True
