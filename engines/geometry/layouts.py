"""Named landmarks of each supported layout: which points are rigid, where the lips are.

The per-avatar face model (:mod:`engines.geometry.face_model`) needs, for a layout, the points a
head pose is fitted on (forehead, nose bridge, eye corners: they do not move when talking), the
ring of the inner lips (the hole of the open mouth), the points under the nose that separate the
lower face (driven by audio) from the upper face, and, for MediaPipe's mesh, its triangles.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engines.errors import InputError

_TRIANGLES_FILE = Path(__file__).resolve().parent / "data" / "mediapipe478_triangles.npy"

IntArray = npt.NDArray[np.int32]


@dataclass(frozen=True)
class LayoutAnchors:
    """Semantic point indices of one landmark layout.

    Attributes:
        name: layout id (``"mediapipe478"``, ``"ibug68"``).
        num_points: N.
        rigid: points used to fit the head pose.
        inner_lip_ring: ordered closed ring around the mouth opening.
        inner_lip_top, inner_lip_bottom: mid points of the upper and lower inner lip.
        outer_lip_top, outer_lip_bottom: mid points of the upper and lower outer lip.
        chin: the lowest point of the chin.
        mouth_corners: left and right mouth corner.
        nose_bottom: the point under the nose; the lower face starts below it.
        left_eye, right_eye: points whose mean is the eye centre.
        jaw: the jaw line from ear to ear (for MSI and masks).
        lips: every lip point (for MSI).
    """

    name: str
    num_points: int
    rigid: tuple[int, ...]
    inner_lip_ring: tuple[int, ...]
    inner_lip_top: int
    inner_lip_bottom: int
    outer_lip_top: int
    outer_lip_bottom: int
    chin: int
    mouth_corners: tuple[int, int]
    nose_bottom: int
    left_eye: tuple[int, ...]
    right_eye: tuple[int, ...]
    jaw: tuple[int, ...]
    lips: tuple[int, ...]


# fmt: off
MEDIAPIPE478 = LayoutAnchors(
    name="mediapipe478",
    num_points=478,
    # Forehead (10, 151, 9, 8), nose bridge (168, 6, 197, 195), eye corners, temples (127, 356).
    rigid=(10, 151, 9, 8, 168, 6, 197, 195, 33, 133, 362, 263, 127, 356),
    inner_lip_ring=(
        78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95,
    ),
    inner_lip_top=13,
    inner_lip_bottom=14,
    outer_lip_top=0,
    outer_lip_bottom=17,
    chin=152,
    mouth_corners=(61, 291),
    nose_bottom=2,
    left_eye=(33, 133, 159, 145),
    right_eye=(362, 263, 386, 374),
    jaw=(
        234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454,
    ),
    lips=(
        61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
        78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415,
    ),
)
# fmt: on

IBUG68 = LayoutAnchors(
    name="ibug68",
    num_points=68,
    rigid=(27, 28, 29, 30, 36, 39, 42, 45, 0, 16),
    inner_lip_ring=(60, 61, 62, 63, 64, 65, 66, 67),
    inner_lip_top=62,
    inner_lip_bottom=66,
    outer_lip_top=51,
    outer_lip_bottom=57,
    chin=8,
    mouth_corners=(48, 54),
    nose_bottom=33,
    left_eye=(36, 37, 38, 39, 40, 41),
    right_eye=(42, 43, 44, 45, 46, 47),
    jaw=tuple(range(17)),
    lips=tuple(range(48, 68)),
)

LAYOUTS: dict[str, LayoutAnchors] = {MEDIAPIPE478.name: MEDIAPIPE478, IBUG68.name: IBUG68}


def anchors_for(layout_name: str) -> LayoutAnchors:
    """The anchors of a layout by name.

    Raises:
        InputError: unknown layout.
    """
    try:
        return LAYOUTS[layout_name]
    except KeyError:
        raise InputError(
            f"unknown landmark layout {layout_name!r}; known: {', '.join(sorted(LAYOUTS))}"
        ) from None


@cache
def mediapipe_triangles() -> IntArray:
    """Triangles of MediaPipe's face mesh.

    MediaPipe ships its tessellation as an edge list (``FACEMESH_TESSELATION``, 0.10.21); its
    triangles are the 3-cliques of that graph (the mouth and eyes stay holes because their rings
    have no chords). They were recovered once and are stored in ``data/mediapipe478_triangles.npy``.

    Returns:
        (854, 3) int32 vertex indices.
    """
    return np.asarray(np.load(_TRIANGLES_FILE), dtype=np.int32)


def delaunay_triangles(points_2d: npt.NDArray[np.float32], hole: tuple[int, ...]) -> IntArray:
    """Delaunay triangles of a sparse layout, without those that close the mouth hole.

    Args:
        points_2d: (N, 2) mean shape.
        hole: ring of point indices whose interior must stay empty (the inner lips).

    Returns:
        (M, 3) int32 vertex indices.
    """
    from scipy.spatial import Delaunay

    triangles = Delaunay(points_2d.astype(np.float64)).simplices.astype(np.int32)
    ring = set(hole)
    keep = [not all(int(v) in ring for v in tri) for tri in triangles]
    return np.ascontiguousarray(triangles[np.array(keep, dtype=bool)])
