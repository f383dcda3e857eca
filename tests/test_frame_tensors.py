"""The batched tensor paste-back and erosion (``engines.frame_tensors``) give today's frames.

``render_io`` (numpy + OpenCV, one frame at a time) is the definition; ``FrameTensors`` must give
the same eroded inputs exactly and the same pasted frames within one grey level, for batches of
reference frames, with and without the "AI-generated" mark, and for crop boxes that reach past the
frame's edges.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import torch

from engines import render_io
from engines.bundle import DEFAULT_AVATAR_DIR, AvatarBundle
from engines.frame_tensors import FrameTensors, WarpMethod
from engines.geometry.crop import CropBox

Images = npt.NDArray[np.uint8]


@pytest.fixture(scope="module")
def bundle() -> AvatarBundle:
    return AvatarBundle.load(DEFAULT_AVATAR_DIR, verify=False)


def _uniform(rng: np.random.Generator, count: int, size: int) -> npt.NDArray[np.float32]:
    return rng.uniform(-1, 1, (count, 3, size, size)).astype(np.float32)


def _smooth(rng: np.random.Generator, count: int, size: int) -> npt.NDArray[np.float32]:
    """Low-frequency images in [-1, 1] (blurred noise, stretched), like a rendered face."""
    noise = rng.uniform(0, 1, (count, size, size, 3)).astype(np.float32)
    blurred = np.stack([cv2.GaussianBlur(image, (0, 0), size / 16) for image in noise])
    low, high = blurred.min(axis=(1, 2), keepdims=True), blurred.max(axis=(1, 2), keepdims=True)
    signed = (blurred - low) / (high - low) * 2.1 - 1.05  # a little past [-1, 1]: clipping counts too
    return np.ascontiguousarray(signed.transpose(0, 3, 1, 2), dtype=np.float32)


def _compare(expected: list[Images], actual: torch.Tensor) -> tuple[int, float]:
    """Max abs difference and fraction of differing values between per-frame and batched frames."""
    got = actual.numpy().astype(np.int16)
    want = np.stack(expected).astype(np.int16)
    assert got.shape == want.shape
    diff = np.abs(got - want)
    return int(diff.max()), float((diff > 0).mean())


def test_eroded_references_equal_render_io_exactly(bundle: AvatarBundle) -> None:
    frames = FrameTensors(bundle)
    reference = bundle.reference
    indices = [0, 7, len(reference) - 1, 7, 120]
    batch = frames.eroded(torch.tensor(indices))
    assert batch.dtype == torch.float32 and batch.shape == (len(indices), 3, frames.size, frames.size)
    for row, index in enumerate(indices):
        expected = render_io.eroded_input(reference.crop(index), reference.mouth_mask(index))
        np.testing.assert_array_equal(batch[row].numpy(), expected)


def _check_paste(
    frames: FrameTensors,
    indices: list[int],
    full: list[Images],
    weights: list[npt.NDArray[np.float32]],
    box: CropBox,
    label: str,
) -> None:
    """Batched paste of uniform and smooth renders, with and without the mark, against render_io.
    Several batches over the same frames: a later one would differ if an earlier one had written
    into the caches."""
    rng = np.random.default_rng(11)
    for kind, make in (("uniform", _uniform), ("smooth", _smooth)):
        rendered = make(rng, len(indices), frames.size)
        for ai_mark in (False, True):
            batch = frames.paste(torch.tensor(indices), torch.from_numpy(rendered), ai_mark)
            assert batch.dtype == torch.uint8
            expected = [
                render_io.paste_rendered(full[index], rendered[row], box, weights[index], ai_mark)
                for row, index in enumerate(indices)
            ]
            worst, share = _compare(expected, batch)
            print(
                f"{label}, {frames.warp_method}, {kind}, ai_mark={ai_mark}: "
                f"max |diff| {worst}, differing {share:.2e}"
            )
            assert worst <= 1
            assert share < 1e-3
            # The box region really was replaced (the test would pass on untouched frames otherwise).
            untouched = np.stack([full[index] for index in indices])
            assert (batch.numpy() != untouched).mean() > 1e-3


@pytest.mark.parametrize("warp", ["sparse", "gather"])
def test_paste_matches_render_io_on_the_default_avatar(bundle: AvatarBundle, warp: WarpMethod) -> None:
    frames = FrameTensors(bundle, warp=warp)
    assert frames.warp_method == warp
    reference = bundle.reference
    indices = [3, 64, len(reference) - 1, 3, 150, 0]
    full: list[Images] = [np.zeros((1, 1, 3), np.uint8)] * len(reference)
    weights: list[npt.NDArray[np.float32]] = [np.zeros((1, 1), np.float32)] * len(reference)
    for index in set(indices):
        full[index] = reference.full_frame(index)
        weights[index] = render_io.paste_weights(reference.mouth_mask(index))
    _check_paste(frames, indices, full, weights, bundle.crop_box, "default avatar")


def _synthetic(
    rng: np.random.Generator, count: int, size: int, height: int, width: int
) -> tuple[list[Images], list[Images], list[Images]]:
    """Crops, full frames and masks; the masks range from a blob to the whole crop, so the blend
    takes the render almost everywhere in the box, including its clamped borders."""
    crops = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]
    full = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]
    masks = []
    for k in range(count):
        mask = np.zeros((size, size), np.uint8)
        if k % 2 == 0:
            mask[:] = 255
        else:
            centre = (
                int(rng.integers(size // 4, 3 * size // 4)),
                int(rng.integers(size // 4, 3 * size // 4)),
            )
            cv2.circle(mask, centre, size // 4, (255,), -1)
        masks.append(mask)
    return crops, full, masks


@pytest.mark.parametrize(
    "box",
    [
        CropBox(-20.3, 50.7, 100.37),  # past the left and bottom edges
        CropBox(100.5, -30.25, 90.0),  # past the top and right edges
        CropBox(-10.0, -12.5, 190.0),  # larger than the frame
        CropBox(20.25, 10.75, 49.5),  # inside, smaller than the crop (downscaling warp)
    ],
)
@pytest.mark.parametrize("warp", ["sparse", "gather"])
def test_paste_matches_render_io_for_boxes_past_the_frame_edge(box: CropBox, warp: WarpMethod) -> None:
    size, height, width, count = 64, 120, 160, 4
    crops, full, masks = _synthetic(np.random.default_rng(5), count, size, height, width)
    frames = FrameTensors.from_arrays(crops, full, masks, box, warp=warp)
    weights = [render_io.paste_weights(mask) for mask in masks]
    _check_paste(frames, [2, 0, 3, 1, 2], full, weights, box, str(box))


def test_a_box_outside_the_frame_leaves_the_frames_and_marks_them() -> None:
    size, height, width = 32, 96, 128
    rng = np.random.default_rng(2)
    crops, full, masks = _synthetic(rng, 2, size, height, width)
    box = CropBox(200.0, 10.0, 40.0)
    frames = FrameTensors.from_arrays(crops, full, masks, box)
    rendered = _uniform(rng, 2, size)
    for ai_mark in (False, True):
        batch = frames.paste(torch.tensor([1, 0]), torch.from_numpy(rendered), ai_mark)
        expected = [
            render_io.paste_rendered(full[i], rendered[row], box, render_io.paste_weights(masks[i]), ai_mark)
            for row, i in enumerate([1, 0])
        ]
        np.testing.assert_array_equal(batch.numpy(), np.stack(expected))


def test_preload_and_bad_inputs() -> None:
    size = 32
    rng = np.random.default_rng(3)
    crops, full, masks = _synthetic(rng, 3, size, 96, 128)
    frames = FrameTensors.from_arrays(crops, full, masks, CropBox(10.0, 20.0, 50.0))
    rendered = torch.from_numpy(_smooth(rng, 2, size))
    first = frames.paste(torch.tensor([2, 1]), rendered, True)
    frames.preload()
    np.testing.assert_array_equal(frames.paste(torch.tensor([2, 1]), rendered, True).numpy(), first.numpy())
    assert frames.eroded(torch.tensor([], dtype=torch.int64)).shape == (0, 3, size, size)
    assert frames.paste(torch.tensor([], dtype=torch.int64), torch.zeros(0, 3, size, size), True).shape == (
        0,
        96,
        128,
        3,
    )
    with pytest.raises(IndexError):
        frames.paste(torch.tensor([3, 0]), rendered, False)
    with pytest.raises(IndexError):
        frames.eroded(torch.tensor([-1]))
    with pytest.raises(ValueError):
        frames.paste(torch.tensor([0]), rendered, False)
    with pytest.raises(ValueError):
        frames.eroded(torch.tensor([[0]]))
    with pytest.raises(ValueError):
        FrameTensors.from_arrays(crops, full, masks, CropBox(10.0, 20.0, 50.0), warp="dense")  # type: ignore[arg-type]


def test_device_frames_check_indices_on_the_host() -> None:
    """Out-of-range reference indices are an IndexError before they reach the device (on a GPU they
    would be a device-side assert that breaks the CUDA context for every session)."""
    from engines.device_frames import DeviceFrames

    frames = DeviceFrames(AvatarBundle.load(DEFAULT_AVATAR_DIR), "cpu")
    count = frames.images.frames
    assert frames.eroded(np.array([0, count - 1])).shape[0] == 2
    with pytest.raises(IndexError, match=f"0..{count - 1}"):
        frames.eroded(np.array([0, count]))
    with pytest.raises(IndexError):
        frames.paste(np.array([-1]), torch.zeros(1, 3, frames.size, frames.size), ai_mark=False)
