"""The renderer's inputs and outputs have one definition (``engines.render_io``).

Training samples and streaming inputs of the same frame are the same arrays, and the frames the
avatars render are those the code produced before the definitions were merged: SHA-256 digests
of every frame recorded then (``tests/golden/frames.json``) for the bundled default avatar and a
`tiny` avatar trained on generated data (``tests/golden/tiny_avatar``), offline and streaming.
Re-recorded once when the project moved from numpy 1.26 to numpy 2: numpy 2's float32 arithmetic
changed at most one grey level in about 1e-5 of the pixels (same OpenCV build; 3 to 40 of each
100 digests changed). Re-recorded again on 2026-12-02 when the project's machine changed (now an
AMD EPYC with AVX-512; same packages: torch 2.13.0, numpy 2.4.6, OpenCV 4.14.0.94): the commit
before the re-recording rendered the new digests too, so the CPU's vector paths moved the
rounding (4 to 35 of each 100 digests changed). And once more the same day, on an Intel Xeon:
the `tiny` digests failed before any code change (the `default` ones were new anyway: the bundled
avatar became `live`). Digests are exact: another CPU may need this again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from engines import render_io
from engines.backends import StreamShape, load_backend
from engines.bundle import AvatarBundle
from engines.device_frames import DeviceFrames
from engines.offline_render import render_frames
from offline_training.dataset import AvatarDataset
from offline_training.synthetic.speech import synthesize_speech
from offline_training.train.data import RendererSamples
from realtime.engine import AvatarEngine
from realtime.file_stream import stream_file

GOLDEN = Path(__file__).parent / "golden"
DEFAULT_AVATAR = Path(__file__).resolve().parents[1] / "engines" / "default_avatar"
AVATARS = {"default": DEFAULT_AVATAR, "tiny": GOLDEN / "tiny_avatar"}


def _speech() -> npt.NDArray[np.float32]:
    """Half a second of silence, 3 s of generated speech (seed 5), half a second of silence."""
    silence = np.zeros(8000, np.float32)
    speech = synthesize_speech(seed=5, duration_s=3.0).audio.astype(np.float32)
    return np.concatenate([silence, speech, silence])


def _digests(images: Iterator[npt.NDArray[np.uint8]]) -> list[str]:
    return [hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16] for image in images]


@pytest.fixture(scope="module")
def golden() -> dict[str, dict[str, list[str]]]:
    recorded: dict[str, dict[str, list[str]]] = json.loads((GOLDEN / "frames.json").read_text())
    return recorded


def test_a_training_sample_is_the_streaming_input_of_the_same_frames(
    synthetic_dataset: Path, tiny_avatar: Path
) -> None:
    """The renderer inputs of a training sample equal those streaming builds on the device."""
    bundle = AvatarBundle.load(tiny_avatar)
    dataset = AvatarDataset.open(synthetic_dataset)
    size = bundle.config.renderer.image_size
    samples = RendererSamples(dataset, np.arange(len(dataset)), 6, size, augment=False)
    frames = DeviceFrames(bundle)
    start = int(samples.starts[len(samples.starts) // 2])
    sample = samples.sample(start, rng=None)
    indices = np.arange(start, start + 6)
    eroded = frames.eroded(indices).numpy()
    shapes = frames.face_shapes(indices, dataset.mouth_params[indices]).numpy()
    assert np.array_equal(sample.eroded[0].numpy(), eroded), "eroded references"
    assert np.array_equal(sample.shapes[0].numpy(), shapes), "face shapes"
    assert eroded.shape == (6, 3, size, size) and shapes.shape == (6, 4, size, size)
    # the check can fail: another frame's inputs differ
    assert not np.array_equal(eroded[0], sample.eroded[0, 5].numpy())


def test_signed_pixels_round_trip_and_clip() -> None:
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    signed = render_io.to_signed(images)
    assert signed.shape == (1, 3, 16, 16) and signed.dtype == np.float32
    assert signed.min() == -1.0 and signed.max() == 1.0
    # to_image truncates, as the renderer's output always has been (frames stay identical): a round
    # trip loses at most one level
    back = render_io.to_image(signed).astype(np.int16)
    assert np.abs(back - images).max() == 1 and (back <= images).all()
    assert render_io.to_image(np.full((3, 2, 2), 7.0, np.float32)).max() == 255
    assert render_io.to_image(np.full((3, 2, 2), -7.0, np.float32)).min() == 0


def test_erosion_greys_only_the_mask() -> None:
    crop = np.full((8, 8, 3), 200, np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[4:, 2:6] = 255
    eroded = render_io.erode(crop, mask)
    assert (eroded[4:, 2:6] == render_io.ERODED_GREY).all()
    assert (eroded[:4] == 200).all() and (crop == 200).all()


@pytest.mark.parametrize("avatar", sorted(AVATARS))
def test_offline_render_gives_the_recorded_frames(
    avatar: str, golden: dict[str, dict[str, list[str]]]
) -> None:
    bundle = AvatarBundle.load(AVATARS[avatar])
    audio = _speech()
    assert _digests(render_frames(bundle, audio)) == golden[avatar]["offline"]
    assert _digests(render_frames(bundle, audio, paste=False)) == golden[avatar]["offline_crops"]


@pytest.mark.parametrize("avatar", sorted(AVATARS))
def test_streaming_gives_the_recorded_frames(avatar: str, golden: dict[str, dict[str, list[str]]]) -> None:
    bundle = AvatarBundle.load(AVATARS[avatar])
    engine = AvatarEngine(bundle, load_backend(bundle, "torch-cpu", StreamShape.for_config(bundle.config)))
    try:
        images = (frame.image for frame in stream_file(engine, _speech()) if frame.image is not None)
        assert _digests(images) == golden[avatar]["streaming"]
    finally:
        engine.close()
