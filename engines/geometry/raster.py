"""The face-shape image the renderer sees: a projected normalised coordinate code (PNCC).

Each pixel covered by the face mesh holds the canonical 3D coordinate (normalised to [0, 1]) of the
surface point seen there, interpolated across triangles; a fourth channel marks the inner mouth
(the opening between the inner lips). Triangles are drawn far to near so nearer surfaces win,
then barycentric coordinates are computed for every covered pixel at once.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int32]

SUBPIXEL_BITS = 4
CHANNELS = 4


def _triangle_ids(points: FloatArray, triangles: IntArray, size: int) -> npt.NDArray[np.int32]:
    """(S, S) int32 id + 1 of the nearest triangle at each pixel, 0 where none."""
    depth = points[triangles, 2].mean(1)
    order = np.argsort(-depth, kind="stable")  # larger z is farther: draw it first
    fixed = np.round(points[:, :2] * (1 << SUBPIXEL_BITS)).astype(np.int32)
    polygons = fixed[triangles[order]]  # gathered once: per-triangle indexing dominated the loop
    ids = np.zeros((size, size), dtype=np.int32)
    fill, line, shift = cv2.fillConvexPoly, cv2.LINE_8, SUBPIXEL_BITS
    for polygon, index in zip(polygons, (order + 1).tolist(), strict=True):
        fill(ids, polygon, (index,), line, shift)
    return ids


def rasterize_face_shape(
    points: FloatArray,
    triangles: IntArray,
    vertex_code: FloatArray,
    inner_lip_ring: tuple[int, ...],
    size: int,
) -> FloatArray:
    """Render the face-shape image of one frame.

    Args:
        points: (N, 3) landmarks in crop pixels (z in pixel units, larger is farther).
        triangles: (M, 3) mesh triangles.
        vertex_code: (N, 3) per-vertex code in [0, 1].
        inner_lip_ring: ordered point indices around the mouth opening.
        size: output side S.

    Returns:
        (S, S, 4) float32 in [0, 1]: code xyz, inner-mouth mask.
    """
    image = np.zeros((size, size, CHANNELS), dtype=np.float32)
    ids = _triangle_ids(points, triangles, size)
    ys, xs = np.nonzero(ids)
    if len(xs):
        tri = triangles[ids[ys, xs] - 1]
        a, b, c = points[tri[:, 0], :2], points[tri[:, 1], :2], points[tri[:, 2], :2]
        p = np.stack([xs, ys], axis=1).astype(np.float32)
        v0, v1, v2 = b - a, c - a, p - a
        den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
        den = np.where(np.abs(den) < 1e-9, 1e-9, den)
        w1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
        w2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
        bary = np.clip(np.stack([1 - w1 - w2, w1, w2], axis=1), 0.0, 1.0)
        bary /= np.maximum(bary.sum(1, keepdims=True), 1e-6)
        codes = np.einsum("pk,pkc->pc", bary, vertex_code[tri])
        image[ys, xs, :3] = codes
    mouth = np.zeros((size, size), dtype=np.uint8)
    ring = np.round(points[list(inner_lip_ring), :2] * (1 << SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(mouth, [ring], (255,), lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
    image[..., 3] = mouth.astype(np.float32) / 255.0
    return image


def face_shape_to_uint8(image: FloatArray) -> npt.NDArray[np.uint8]:
    """(S, S, 4) float32 in [0, 1] to (S, S, 4) uint8 for storage as an RGBA PNG."""
    return np.asarray(np.clip(image * 255.0 + 0.5, 0, 255), dtype=np.uint8)
