"""Where the attention model's lips, eyes and irises go in the 478-point mesh.

The index tables are MediaPipe's ``tensors_to_face_landmarks_with_attention`` graph (0.10.21):
lips and eye contours replace the mesh's x and y at these indices (the mesh keeps its z), the
irises become points 468-477 with z the mean z of their eye's contour.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

MESH_POINTS = 468
ALL_POINTS = 478

LIPS: tuple[int, ...] = (
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291,
    185, 40, 39, 37, 0, 267, 269, 270, 409,
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308,
    191, 80, 81, 82, 13, 312, 311, 310, 415,
    76, 77, 90, 180, 85, 16, 315, 404, 320, 307, 306,
    184, 74, 73, 72, 11, 302, 303, 304, 408,
    62, 96, 89, 179, 86, 15, 316, 403, 319, 325, 292,
    183, 42, 41, 38, 12, 268, 271, 272, 407,
)  # fmt: skip
LEFT_EYE: tuple[int, ...] = (
    33, 7, 163, 144, 145, 153, 154, 155, 133,
    246, 161, 160, 159, 158, 157, 173,
    130, 25, 110, 24, 23, 22, 26, 112, 243,
    247, 30, 29, 27, 28, 56, 190,
    226, 31, 228, 229, 230, 231, 232, 233, 244,
    113, 225, 224, 223, 222, 221, 189,
    35, 124, 46, 53, 52, 65,
    143, 111, 117, 118, 119, 120, 121, 128, 245,
    156, 70, 63, 105, 66, 107, 55, 193,
)  # fmt: skip
RIGHT_EYE: tuple[int, ...] = (
    263, 249, 390, 373, 374, 380, 381, 382, 362,
    466, 388, 387, 386, 385, 384, 398,
    359, 255, 339, 254, 253, 252, 256, 341, 463,
    467, 260, 259, 257, 258, 286, 414,
    446, 261, 448, 449, 450, 451, 452, 453, 464,
    342, 445, 444, 443, 442, 441, 413,
    265, 353, 276, 283, 282, 295,
    372, 340, 346, 347, 348, 349, 350, 357, 465,
    383, 300, 293, 334, 296, 336, 285, 417,
)  # fmt: skip
LEFT_IRIS: tuple[int, ...] = (468, 469, 470, 471, 472)
RIGHT_IRIS: tuple[int, ...] = (473, 474, 475, 476, 477)
# The iris depth is the mean depth of the eye's own contour (its first 16 points).
LEFT_IRIS_DEPTH_FROM = LEFT_EYE[:16]
RIGHT_IRIS_DEPTH_FROM = RIGHT_EYE[:16]


def refine(
    mesh: FloatArray,
    lips: FloatArray,
    left_eye: FloatArray,
    right_eye: FloatArray,
    left_iris: FloatArray,
    right_iris: FloatArray,
) -> FloatArray:
    """Merge the attention model's outputs into one mesh.

    Args:
        mesh: (468, 3) mesh points; lips (80, 2), left_eye and right_eye (71, 2), left_iris and
            right_iris (5, 2): x, y in one common frame, z in the mesh's units.

    Returns:
        (478, 3) float32 points.
    """
    points = np.zeros((ALL_POINTS, 3), dtype=np.float32)
    points[:MESH_POINTS] = mesh
    for indices, part in ((LIPS, lips), (LEFT_EYE, left_eye), (RIGHT_EYE, right_eye)):
        points[list(indices), :2] = part
    for indices, part, depth_from in (
        (LEFT_IRIS, left_iris, LEFT_IRIS_DEPTH_FROM),
        (RIGHT_IRIS, right_iris, RIGHT_IRIS_DEPTH_FROM),
    ):
        points[list(indices), :2] = part
        points[list(indices), 2] = mesh[list(depth_from), 2].mean()
    return points
