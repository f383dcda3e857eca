"""The batched torch face-shape rasteriser against the OpenCV one it must reproduce pixel for pixel."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch

from engines.bundle import DEFAULT_AVATAR_DIR, AvatarBundle
from engines.geometry.layouts import anchors_for
from engines.geometry.raster import _triangle_ids, rasterize_face_shape
from engines.geometry.raster_torch import FaceShapeRasterizer

FloatArray = npt.NDArray[np.float32]
CODE_TOLERANCE = 1e-5


def _assert_matches_opencv(
    points: FloatArray,
    triangles: npt.NDArray[np.int32],
    code: FloatArray,
    ring: tuple[int, ...],
    size: int,
) -> None:
    """Every frame of the (B, N, 3) batch equals raster.py: ids and mask exactly, code to 1e-5."""
    rasterizer = FaceShapeRasterizer(triangles, code, ring, size)
    batch = torch.from_numpy(points)
    ids = rasterizer.triangle_ids(batch).numpy()
    images = rasterizer(batch).numpy()
    assert images.shape == (len(points), 4, size, size)
    assert images.dtype == np.float32
    for frame, (frame_ids, image) in enumerate(zip(ids, images, strict=True)):
        expected_ids = _triangle_ids(points[frame], triangles, size)
        expected = rasterize_face_shape(points[frame], triangles, code, ring, size).transpose(2, 0, 1)
        differing = np.argwhere(frame_ids != expected_ids)
        assert not len(differing), (
            f"frame {frame}: {len(differing)} ids differ, first at (y, x) {differing[0]}"
        )
        np.testing.assert_array_equal(image[3], expected[3], err_msg=f"frame {frame}: mouth mask")
        np.testing.assert_allclose(
            image[:3], expected[:3], rtol=0, atol=CODE_TOLERANCE, err_msg=f"frame {frame}"
        )


def _random_triangles(rng: np.random.Generator, kind: str, count: int, size: int) -> FloatArray:
    """(count * 3, 3) corners of ``count`` separate triangles of one family of corner cases."""
    if kind == "large":  # many cross the border or cover the image
        corners = rng.uniform(-0.5 * size, 1.5 * size, (count, 3, 3))
    elif kind == "far":  # far outside on some side, crossing the whole image
        corners = rng.uniform(-8 * size, 9 * size, (count, 3, 3))
    elif kind == "subpixel":  # smaller than a pixel, some just off the image
        corners = rng.uniform(-2, size + 2, (count, 1, 3)) + rng.uniform(-0.7, 0.7, (count, 3, 3))
    elif kind == "flat":  # flat tops and bottoms, all-flat, repeated and collinear corners
        corners = rng.uniform(0, size, (count, 1, 3)) + rng.uniform(-6, 6, (count, 3, 3))
        corners[:, 1, 1] = corners[:, 0, 1]
        corners[::3, 2, 1] = corners[::3, 0, 1]
        corners[1::4, 2] = corners[1::4, 0]
        corners[2::5, 2, :2] = 2 * corners[2::5, 1, :2] - corners[2::5, 0, :2]
    elif kind == "grid":  # on the 1/16 grid, many on exact half pixels, where rounding ties
        corners = rng.integers(-32, (size + 2) * 16, (count, 3, 3)) / 16.0
        corners[..., :2] = np.round(corners[..., :2] * 2) / 2 - 0.5 * (rng.random((count, 3, 2)) < 0.3)
    else:
        raise AssertionError(kind)
    if kind != "far":
        corners[..., 2] = np.round(corners[..., 2] / 8)  # many equal depths: draw order ties
    return corners.reshape(-1, 3).astype(np.float32)


@pytest.mark.parametrize("kind", ["large", "far", "subpixel", "flat", "grid"])
@pytest.mark.parametrize("size", [1, 7, 37, 64])
def test_random_meshes_match_opencv_exactly(kind: str, size: int) -> None:
    rng = np.random.default_rng([size, len(kind)])
    count = 40
    frames = np.stack([_random_triangles(rng, kind, count, size) for _ in range(3)])
    triangles = np.arange(count * 3, dtype=np.int32).reshape(count, 3)
    code = rng.random((count * 3, 3)).astype(np.float32)
    # A random, self-intersecting "mouth" ring, partly off the image for some families.
    ring = tuple(int(i) for i in rng.permutation(count * 3)[:17])
    _assert_matches_opencv(frames, triangles, code, ring, size)


def test_shared_vertices_and_overlaps_match_opencv_exactly() -> None:
    """A connected mesh folded over itself, with random depths: the painter's order decides."""
    rng = np.random.default_rng(7)
    size, side = 48, 9
    ys, xs = np.mgrid[0:side, 0:side].reshape(2, -1)
    quads = [
        (y * side + x, y * side + x + 1, (y + 1) * side + x) for y in range(side - 1) for x in range(side - 1)
    ]
    quads += [
        (y * side + x + 1, (y + 1) * side + x + 1, (y + 1) * side + x)
        for y in range(side - 1)
        for x in range(side - 1)
    ]
    triangles = np.array(quads, dtype=np.int32)
    frames = []
    for _ in range(4):
        grid = np.stack([xs, ys], axis=1) * (size / (side - 1)) + rng.normal(0, 6, (side * side, 2))
        frames.append(np.concatenate([grid, rng.normal(0, 3, (side * side, 1))], axis=1))
    code = rng.random((side * side, 3)).astype(np.float32)
    ring = (10, 11, 12, 21, 30, 29, 28, 19)
    _assert_matches_opencv(np.stack(frames).astype(np.float32), triangles, code, ring, size)


@pytest.fixture(scope="module")
def avatar() -> AvatarBundle:
    return AvatarBundle.load(DEFAULT_AVATAR_DIR)


def _avatar_points(avatar: AvatarBundle, frames: npt.NDArray[np.int64], size: int) -> FloatArray:
    """(T, N, 3) crop points of reference frames, as render_io.face_shapes makes them."""
    reference, model = avatar.reference, avatar.face_model
    posed = reference.pose.apply(model.shapes(reference.mouth_params, reference.upper_params))
    return np.stack([avatar.crop_box.to_crop_points(posed[i], size) for i in frames]).astype(np.float32)


@pytest.mark.parametrize("size", [128, 256])
def test_default_avatar_frames_match_opencv_exactly(avatar: AvatarBundle, size: int) -> None:
    assert avatar.config.renderer.image_size == 128
    model = avatar.face_model
    ring = anchors_for(model.layout).inner_lip_ring
    total = len(avatar.reference.mouth_params)
    frames = np.linspace(0, total - 1, 10).round().astype(int)
    points = _avatar_points(avatar, frames, size)
    _assert_matches_opencv(points, model.triangles, model.vertex_code, ring, size)

    images = FaceShapeRasterizer(model.triangles, model.vertex_code, ring, size)(torch.from_numpy(points))
    assert (images[:, 3].sum(dim=(1, 2)) > 0).any(), "no open mouth among the frames: a weak test"
    assert (images[:, :3].amax(dim=1) > 0).float().mean() > 0.2, "the face should cover the crop"


def test_a_frame_does_not_depend_on_its_batch(avatar: AvatarBundle) -> None:
    model = avatar.face_model
    rasterizer = FaceShapeRasterizer(
        model.triangles, model.vertex_code, anchors_for(model.layout).inner_lip_ring, 128
    )
    points = torch.from_numpy(_avatar_points(avatar, np.arange(0, 60, 10), 128))
    together = rasterizer(points)
    for frame in range(len(points)):
        assert torch.equal(together[frame], rasterizer(points[frame : frame + 1])[0])


def test_rejects_bad_inputs() -> None:
    triangles = np.array([[0, 1, 2]], dtype=np.int32)
    code = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="triangles"):
        FaceShapeRasterizer(np.array([[0, 1, 5]]), code, (0, 1, 2), 16)
    with pytest.raises(ValueError, match="size"):
        FaceShapeRasterizer(triangles, code, (0, 1, 2), 0)
    rasterizer = FaceShapeRasterizer(triangles, code, (0, 1, 2), 16)
    with pytest.raises(ValueError, match="landmarks"):
        rasterizer(torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="points"):
        rasterizer(torch.zeros(4, 3))
