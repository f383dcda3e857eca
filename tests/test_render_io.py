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

So each frame also has a coarse picture recorded (``tests/golden/frame_means.npz``: the mean of
every channel over an 8x8 grid of blocks). Frames whose bytes differ from the recording still pass
when no block mean moved by more than ROUNDING_LEVELS grey levels — what a CPU's or a library's
rounding does (one level in a few pixels moves a block mean by thousandths) — with a warning that
says so; any change of what is drawn moves some block by far more (a mouth drawn one level
brighter over a 16x8 px patch: 0.125 in a 32x32 block; one torch thread instead of two changes
17-54 of the default avatar's 100 digests, at most 7 values of a frame by one level, and moves no
block mean by more than 0.005). ``python tests/record_golden_frames.py``
records both again; do that only when the frames are meant to change, or on a new machine after
the warning.
"""

from __future__ import annotations

import hashlib
import json
import warnings
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


DIGESTS = GOLDEN / "frames.json"
BLOCK_MEANS = GOLDEN / "frame_means.npz"
GRID = 8
ROUNDING_LEVELS = 0.05
Images = list[npt.NDArray[np.uint8]]


def digests(images: Images) -> list[str]:
    """SHA-256 (16 hex digits) of each frame's bytes."""
    return [hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16] for image in images]


def block_means(images: Images) -> npt.NDArray[np.float32]:
    """(N, 3, GRID, GRID) mean of each channel over a GRID x GRID grid of blocks of (H, W, 3) frames
    (H and W multiples of GRID)."""
    stacked = np.stack(images).astype(np.float64)
    n, height, width, channels = stacked.shape
    blocks = stacked.reshape(n, GRID, height // GRID, GRID, width // GRID, channels)
    return blocks.mean(axis=(2, 4)).transpose(0, 3, 1, 2).astype(np.float32)


def rendered(avatar: str, kind: str) -> Images:
    """The frames of one golden recording: ``kind`` is offline, offline_crops or streaming."""
    bundle = AvatarBundle.load(AVATARS[avatar])
    audio = _speech()
    if kind != "streaming":
        return list(render_frames(bundle, audio, paste=kind == "offline"))
    engine = AvatarEngine(bundle, load_backend(bundle, "torch-cpu", StreamShape.for_config(bundle.config)))
    try:
        return [frame.image for frame in stream_file(engine, audio) if frame.image is not None]
    finally:
        engine.close()


@pytest.fixture(scope="module")
def golden() -> dict[str, dict[str, list[str]]]:
    recorded: dict[str, dict[str, list[str]]] = json.loads(DIGESTS.read_text())
    return recorded


def _assert_recorded(images: Images, avatar: str, kind: str, golden: dict[str, dict[str, list[str]]]) -> None:
    """The frames are the recorded ones: byte for byte, or within rounding (with a warning)."""
    expected = golden[avatar][kind]
    measured = digests(images)
    if measured == expected:
        return
    assert len(measured) == len(expected), f"{avatar} {kind}: {len(measured)} frames, not {len(expected)}"
    with np.load(BLOCK_MEANS) as recorded:
        moved = np.abs(block_means(images) - recorded[f"{avatar}/{kind}"]).max(axis=(1, 2, 3))
    changed = [index for index, (a, b) in enumerate(zip(measured, expected, strict=True)) if a != b]
    assert moved.max() <= ROUNDING_LEVELS, (
        f"{avatar} {kind}: {len(changed)} of {len(expected)} frames differ from the recording, frame "
        f"{int(moved.argmax())} by {moved.max():.3f} grey levels in a block mean (rounding moves them "
        f"by ≤ {ROUNDING_LEVELS}): what is drawn changed"
    )
    warnings.warn(
        f"{avatar} {kind}: {len(changed)} of {len(expected)} frames differ from the recorded bytes by "
        f"rounding only (block means within {moved.max():.4f} grey levels); re-record on this machine "
        "with python tests/record_golden_frames.py",
        stacklevel=2,
    )


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
    _assert_recorded(rendered(avatar, "offline"), avatar, "offline", golden)
    _assert_recorded(rendered(avatar, "offline_crops"), avatar, "offline_crops", golden)


@pytest.mark.parametrize("avatar", sorted(AVATARS))
def test_streaming_gives_the_recorded_frames(avatar: str, golden: dict[str, dict[str, list[str]]]) -> None:
    _assert_recorded(rendered(avatar, "streaming"), avatar, "streaming", golden)


def test_a_change_of_what_is_drawn_is_not_taken_for_rounding(golden: dict[str, dict[str, list[str]]]) -> None:
    """The tolerance can fail. Rounding (one level in 20 scattered values of every crop, three times
    what one torch thread instead of two does to the default avatar's frames: at most 7) is told
    apart from one crop drawn one level brighter over a 16x8 px patch."""
    images = rendered("tiny", "offline_crops")
    _assert_recorded(images, "tiny", "offline_crops", golden)
    rng = np.random.default_rng(0)
    rounded = [image.copy() for image in images]
    for image in rounded:
        rows, columns, channels = (rng.integers(0, size, 20) for size in image.shape)
        values = image[rows, columns, channels]
        image[rows, columns, channels] = np.where(values < 255, values + 1, 254)
    with pytest.warns(UserWarning, match="rounding only"):
        _assert_recorded(rounded, "tiny", "offline_crops", golden)
    drawn = [image.copy() for image in images]
    drawn[3][40:48, 56:72] = np.minimum(drawn[3][40:48, 56:72].astype(np.int16) + 1, 255).astype(np.uint8)
    with pytest.raises(AssertionError, match="what is drawn changed"):
        _assert_recorded(drawn, "tiny", "offline_crops", golden)
