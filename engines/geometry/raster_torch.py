"""Batched PyTorch face-shape rasteriser, pixel-exact with :mod:`engines.geometry.raster`.

:func:`engines.geometry.raster.rasterize_face_shape` paints one frame's triangles far to near with
``cv2.fillConvexPoly`` (LINE_8, 4 sub-pixel bits) and the inner mouth with ``cv2.fillPoly``. This
module computes the same pixels for a batch of frames with tensor code only, on any torch device,
by re-deriving OpenCV 4.11's integer algorithms (``modules/imgproc/src/drawing.cpp``) in closed form:

* ``FillConvexPoly`` first draws every edge with ``Line2`` (a 16.16 fixed-point DDA clipped to the
  image, plus its rounded far end point), then fills scanlines between the two vertex chains that
  leave the top vertex. For a triangle the chain walk reduces to: rows ``ra .. max(rb, rc) - 1``
  (a row is a vertex y rounded half up; ``a`` is the first vertex with the smallest y, ``b`` and
  ``c`` follow it), the left chain on edge ``a->b`` above row ``rb`` and on ``b->c`` from there,
  the right chain on ``a->c`` above ``rc`` and on ``c->b`` from there; an edge's x at row y is
  ``x_s + (y - r_s) * dx`` with OpenCV's rounded integer ``dx``; the span is both x rounded.
* ``fillPoly``: ``CollectPolyEdges`` draws each edge with the integer Bresenham ``Line``
  (``LineIterator``) and keeps (since OpenCV 4.9) a fill edge between the *pixel-rounded*, and off
  image clipped, end points; ``FillEdgeCollection`` fills each row between consecutive pairs of
  the crossing edges' sorted x (even-odd rule).

The painter's order becomes a per-pixel maximum of the draw rank (``scatter_reduce`` ``amax``).
Work is proportional to the pixels drawn, not to M x S x S: segments become pixels and triangles
rows through cumulative sums, whose totals cost a few host synchronisations per call (so the
module runs eagerly; it is not meant for CUDA graph capture).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

XY_SHIFT = 16
SUBPIXEL_BITS = 4
_HALF = 1 << (XY_SHIFT - 1)
_SUBPIXEL_HALF = 1 << (SUBPIXEL_BITS - 1)
_INACTIVE = 1 << 62  # x of an edge not crossing a row: sorts after every real x


def _expand(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Enumerate ``counts[i]`` outputs for each item i (like ``repeat_interleave``, cheaper on CPU).

    Args:
        counts: (K,) int64, >= 0.

    Returns:
        (T,) item of each output, (T,) offset of each output within its item, (K,) first output
        of each item.
    """
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    total = int(ends[-1]) if counts.numel() else 0
    marker = torch.zeros(total + 1, dtype=torch.int64, device=counts.device)
    marker.index_add_(0, starts, torch.ones_like(starts))
    item = torch.cumsum(marker[:total], 0)
    item -= 1
    offset = torch.arange(total, device=counts.device)
    offset -= starts.index_select(0, item)
    return item, offset, starts


def _items(counts: torch.Tensor, dtype: torch.dtype = torch.int64) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Item of each of ``counts[i]`` outputs per item i, without the offsets of :func:`_expand`.

    Args:
        counts: (K,) int64, >= 0.
        dtype: integer type of the result, wide enough for K.

    Returns:
        (T,) item of each output (``dtype``), (K,) int64 first output of each item, and T.
    """
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    total = int(ends[-1]) if counts.numel() else 0
    marker = torch.zeros(total + 1, dtype=dtype, device=counts.device)
    marker.index_add_(0, starts, torch.ones_like(starts, dtype=dtype))
    item = torch.cumsum(marker[:total], 0, dtype=dtype)
    item -= 1
    return item, starts, total


def _scaled_trunc(a: torch.Tensor, b: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``(int64)((double)a * b / den)`` elementwise (C++ truncation), 0 where ``den`` is 0."""
    safe = torch.where(den == 0, 1, den)
    value = (a.double() * b.double() / safe.double()).trunc().long()
    return torch.where(den == 0, 0, value)


def _clip_line_all(
    width: int, height: int, x1: torch.Tensor, y1: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV ``clipLine(Size2l, Point2l&, Point2l&)``, step for step, on (K,) int64 segments."""
    right, bottom = width - 1, height - 1

    def code(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x < 0).long() + (x > right).long() * 2 + (y < 0).long() * 4 + (y > bottom).long() * 8

    c1, c2 = code(x1, y1), code(x2, y2)
    clip = ((c1 & c2) == 0) & ((c1 | c2) != 0)

    move = clip & ((c1 & 12) != 0)
    a = torch.where(c1 < 8, 0, bottom)
    x1 = torch.where(move, x1 + _scaled_trunc(a - y1, x2 - x1, y2 - y1), x1)
    y1 = torch.where(move, a, y1)
    c1 = torch.where(move, (x1 < 0).long() + (x1 > right).long() * 2, c1)
    move = clip & ((c2 & 12) != 0)
    a = torch.where(c2 < 8, 0, bottom)
    x2 = torch.where(move, x2 + _scaled_trunc(a - y2, x2 - x1, y2 - y1), x2)
    y2 = torch.where(move, a, y2)
    c2 = torch.where(move, (x2 < 0).long() + (x2 > right).long() * 2, c2)

    clip = clip & ((c1 & c2) == 0) & ((c1 | c2) != 0)
    move = clip & (c1 != 0)
    a = torch.where(c1 == 1, 0, right)
    y1 = torch.where(move, y1 + _scaled_trunc(a - x1, y2 - y1, x2 - x1), y1)
    x1 = torch.where(move, a, x1)
    c1 = torch.where(move, 0, c1)
    move = clip & (c2 != 0)
    a = torch.where(c2 == 1, 0, right)
    y2 = torch.where(move, y2 + _scaled_trunc(a - x2, y2 - y1, x2 - x1), y2)
    x2 = torch.where(move, a, x2)
    c2 = torch.where(move, 0, c2)
    return (c1 | c2) == 0, x1, y1, x2, y2


def _clip_line(
    width: int, height: int, x1: torch.Tensor, y1: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV ``clipLine`` on (K,) int64 segments against ``[0, width) x [0, height)``.

    Returns:
        (K,) bool whether the clipped segment is inside, and the end points as OpenCV leaves them
        (moved even for some segments it then rejects).
    """
    if width == height:
        ends = torch.stack([x1, y1, x2, y2])
        out = ((ends < 0) | (ends >= width)).any(0)
    else:
        out = (x1 < 0) | (x1 >= width) | (y1 < 0) | (y1 >= height)
        out |= (x2 < 0) | (x2 >= width) | (y2 < 0) | (y2 >= height)
    index = out.nonzero().squeeze(1)
    if index.numel() == 0:  # clipLine leaves segments inside the image as they are
        return ~out, x1, y1, x2, y2
    ok, cx1, cy1, cx2, cy2 = _clip_line_all(
        width, height, *(v.index_select(0, index) for v in (x1, y1, x2, y2))
    )
    return (
        (~out).index_copy(0, index, ok),
        x1.index_copy(0, index, cx1),
        y1.index_copy(0, index, cy1),
        x2.index_copy(0, index, cx2),
        y2.index_copy(0, index, cy2),
    )


def _line2_pixels(
    x1: torch.Tensor,
    y1: torch.Tensor,
    x2: torch.Tensor,
    y2: torch.Tensor,
    size: int,
    base: torch.Tensor,
    value: torch.Tensor,
    spare: int,
    itype: torch.dtype,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Pixels put by OpenCV's ``Line2`` for (K,) int64 segments in 16.16 fixed point.

    Every pixel lies in ``[0, size]^2`` (one more than the image on each axis: ``Line2`` may put
    x or y = size, which OpenCV then skips), so it is addressed in a canvas of side ``size + 1``.

    Args:
        x1, y1, x2, y2: (K,) segment end points.
        size: image side S.
        base: (K,) flat index of each segment's canvas.
        value: (K,) value of each segment.
        spare: an index the caller ignores, given to the end points of segments off the image.
        itype: integer type of the values and of the per-pixel work (int32 if the canvas and
            the values fit, else int64).

    Returns:
        ((T,) int64 flat canvas index, (T,) ``itype`` value) of the DDA pixels, and (K,)
        likewise of the end points (duplicates possible).
    """
    side = size + 1
    inside, x1, y1, x2, y2 = _clip_line(size << XY_SHIFT, size << XY_SHIFT, x1, y1, x2, y2)
    ends = torch.stack([x1, y1, x2, y2]).view(2, 2, -1)  # (end, axis, K)
    d = ends[1] - ends[0]
    d_abs = d.abs()
    horizontal = d_abs[0] > d_abs[1]
    # (end, major/minor axis, K), then the ends ordered along the major axis.
    axes = torch.where(horizontal, ends, ends.flip(1))
    ordered = torch.where(axes[1, 0] < axes[0, 0], axes.flip(0), axes)
    major_len = torch.where(horizontal, d_abs[0], d_abs[1])
    minor_len = ordered[1, 1] - ordered[0, 1]
    step = torch.div(minor_len * (1 << XY_SHIFT), major_len | 1, rounding_mode="trunc")
    major_stride = torch.where(horizontal, 1, side)
    minor_stride = (side + 1) - major_stride
    rounded = (ordered + _HALF) >> XY_SHIFT
    counts = torch.where(inside, (major_len >> XY_SHIFT) + 1, 0)

    # Per pixel in ``itype`` (int32 where the canvas allows: much faster on CPU). Every term
    # fits: indices lie in the canvas, |k * step| <= the minor length (|step| <= 2^16) and the
    # minor coordinate stays in [0, size << 16] + 1/2 for a clipped segment.
    segment, starts, _ = _items(counts, itype)

    def at(values: torch.Tensor) -> torch.Tensor:
        return values.to(itype).index_select(0, segment)

    k = torch.arange(segment.numel(), dtype=itype, device=segment.device)
    k -= at(starts)
    index = at(major_stride) * k
    index += at(base + rounded[0, 0] * major_stride)
    minor = at(step) * k
    minor += at(ordered[0, 1] + _HALF)
    minor >>= XY_SHIFT
    minor *= at(minor_stride)
    index += minor

    # The far end point, of inside segments only: the others go to the spare last element.
    end_index = base + rounded[1, 0] * major_stride + rounded[1, 1] * minor_stride
    end_index = torch.where(inside, end_index, spare)
    return (index.long(), at(value)), (end_index, value.to(itype))


def _line_pixels(
    inside: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels of OpenCV's 8-connected ``Line`` (``LineIterator``, left to right).

    Args:
        inside, x1, y1, x2, y2: (K,) segments in whole pixels, as :func:`_clip_line` returns
            them for the image.

    Returns:
        (T,) segment index, (T,) x and (T,) y of every pixel, all inside the image.
    """
    swap = x2 < x1
    sx1, sy1 = torch.where(swap, x2, x1), torch.where(swap, y2, y1)
    dx = (x2 - x1).abs()
    dy = torch.where(swap, y1 - y2, y2 - y1)
    sign_y = torch.where(dy < 0, -1, 1)
    dy = dy.abs()
    vertical = dy > dx
    major = torch.where(vertical, dy, dx)
    minor = torch.where(vertical, dx, dy)
    counts = torch.where(inside, major + 1, 0)

    params = torch.stack([vertical.long(), sx1, sy1, sign_y, major, minor], dim=1)
    segment, k, _ = _expand(counts)
    p = params.index_select(0, segment)
    major_len = p[:, 4]
    # Minor steps taken by Bresenham's error term (err = dx - 2 dy, +2 dx on a minor step) after
    # k major steps.
    moved = torch.div(2 * p[:, 5] * k + major_len - 1, (2 * major_len).clamp(min=1), rounding_mode="floor")
    moved = torch.where(major_len == 0, 0, moved)
    vert = p[:, 0].bool()
    xs = p[:, 1] + torch.where(vert, moved, k)
    ys = p[:, 2] + p[:, 3] * torch.where(vert, k, moved)
    return segment, xs, ys


def _fixed(xy: torch.Tensor) -> torch.Tensor:
    """(..., 2) float32 pixels -> (..., 2) int64 in 1/16 pixel, rounded half to even like NumPy."""
    return torch.round(xy * float(1 << SUBPIXEL_BITS)).long()


class FaceShapeRasterizer:
    """Batched, device-agnostic twin of :func:`engines.geometry.raster.rasterize_face_shape`.

    Coverage (which triangle wins each pixel) and the inner-mouth mask equal OpenCV 4.11's pixel
    for pixel; the code channels equal the NumPy reference to float32 rounding. A frame's result
    does not depend on the other frames of the batch.
    """

    def __init__(
        self,
        triangles: npt.NDArray[np.integer[Any]],
        vertex_code: npt.NDArray[np.floating[Any]],
        inner_lip_ring: tuple[int, ...],
        size: int,
        device: torch.device | str = "cpu",
    ) -> None:
        """Keep the mesh on ``device``.

        Args:
            triangles: (M, 3) vertex indices.
            vertex_code: (N, 3) per-vertex code in [0, 1].
            inner_lip_ring: ordered point indices around the mouth opening.
            size: output side S.
            device: where the tensors live and the work runs.
        """
        tri = np.asarray(triangles)
        code = np.asarray(vertex_code)
        if tri.ndim != 2 or tri.shape[1] != 3:
            raise ValueError(f"triangles must be (M, 3), got {tri.shape}")
        if code.ndim != 2 or code.shape[1] != 3:
            raise ValueError(f"vertex_code must be (N, 3), got {code.shape}")
        if len(tri) and (tri.min() < 0 or tri.max() >= len(code)):
            raise ValueError("triangles index points outside vertex_code")
        if not 0 < size < 1 << 14:
            raise ValueError(f"size must be in [1, 16383], got {size}")
        self.device = torch.device(device)
        self.size = int(size)
        self.triangles = torch.as_tensor(tri.astype(np.int64), device=self.device)
        self.vertex_code = torch.as_tensor(code.astype(np.float32), device=self.device)
        self.inner_lip_ring = torch.as_tensor(np.asarray(inner_lip_ring, np.int64), device=self.device)
        self._three = torch.tensor(3.0, dtype=torch.float32, device=self.device)
        # Row 3 v + c of a triangle's corner table is coordinate c of its vertex v.
        self._corner_offsets = (
            self.triangles.T[:, None, :] * 3 + torch.arange(3, device=self.device)[None, :, None]
        ).reshape(9, -1)
        # (9, M): channel c of the code of vertex v in row 3 v + c.
        self._corner_code = self.vertex_code[self.triangles].permute(1, 2, 0).reshape(9, -1)
        # Column f: the corners a, b, c when corner f comes first.
        self._rotations = torch.tensor([[0, 1, 2], [1, 2, 0], [2, 0, 1]], device=self.device)
        self._edge_from = torch.tensor([0, 0, 1, 2], device=self.device)  # a->b, a->c, b->c, c->b
        self._edge_to = torch.tensor([1, 2, 2, 1], device=self.device)
        self._constants: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """Render the face-shape images of B frames.

        Args:
            points: (B, N, 3) float32 landmarks in crop pixels (z larger = farther).

        Returns:
            (B, 4, S, S) float32 in [0, 1]: channels 0..2 the interpolated vertex code, channel 3
            the inner-mouth mask.
        """
        pts = self._prepare(points)
        batch, size = pts.shape[0], self.size
        corners = self._corners(pts)
        pixel, tri = self._coverage(corners, batch)
        image = torch.zeros(batch, 4, size * size, dtype=torch.float32, device=self.device)
        if tri.numel():
            frame = torch.div(pixel, size * size, rounding_mode="floor")
            within = pixel - frame * (size * size)
            y = torch.div(within, size, rounding_mode="floor")
            xy = torch.stack([within - y * size, y]).to(torch.float32)
            code = self._interpolate(corners, xy, tri)
            flat = image.view(-1)
            plane = frame * (4 * size * size) + within
            for channel in range(3):
                flat.index_copy_(0, plane + channel * size * size, code[channel])
        image[:, 3] = self._mouth_mask(pts).view(batch, size * size)
        return image.view(batch, 4, size, size)

    def triangle_ids(self, points: torch.Tensor) -> torch.Tensor:
        """The id map of :func:`engines.geometry.raster._triangle_ids` for B frames.

        Args:
            points: (B, N, 3) landmarks in crop pixels.

        Returns:
            (B, S, S) int32: index + 1 of the triangle seen at each pixel, 0 where none.
        """
        pts = self._prepare(points)
        pixel, tri = self._coverage(self._corners(pts), pts.shape[0])
        ids = torch.zeros(pts.shape[0] * self.size * self.size, dtype=torch.int32, device=self.device)
        ids.index_copy_(0, pixel, (tri % self.triangles.shape[0] + 1).to(torch.int32))
        return ids.view(pts.shape[0], self.size, self.size)

    def mouth_mask(self, points: torch.Tensor) -> torch.Tensor:
        """The inner-mouth mask (``cv2.fillPoly`` of the inner-lip ring) of B frames.

        Args:
            points: (B, N, 3) landmarks in crop pixels.

        Returns:
            (B, S, S) bool.
        """
        return self._mouth_mask(self._prepare(points))

    def _prepare(self, points: torch.Tensor) -> torch.Tensor:
        if points.ndim != 3 or points.shape[2] != 3:
            raise ValueError(f"points must be (B, N, 3), got {tuple(points.shape)}")
        if points.shape[1] != self.vertex_code.shape[0]:
            raise ValueError(f"points have {points.shape[1]} landmarks, the mesh {self.vertex_code.shape[0]}")
        return points.to(device=self.device, dtype=torch.float32).contiguous()

    def _corners(self, pts: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) landmarks -> (9, B*M) float32: row 3 v + c is coordinate c of corner v."""
        batch, points = pts.shape[:2]
        frame = torch.arange(batch, device=self.device).view(1, batch, 1) * (points * 3)
        index = (self._corner_offsets[:, None, :] + frame).view(-1)
        return pts.view(-1).index_select(0, index).view(9, -1)

    def _coverage(self, corners: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Which triangle wins each pixel.

        Args:
            corners: (9, B*M) triangle corners (see :meth:`_corners`).
            batch: B.

        Returns:
            (P,) flat index into (B, S, S) of every covered pixel, ascending, and (P,) its
            triangle as ``frame * M + triangle``.
        """
        size, side = self.size, self.size + 1
        count = self.triangles.shape[0]
        base, ranks, frame_offset = self._batch_constants(batch)
        # As NumPy's float32 mean: ((z0 + z1) + z2) / 3, divided by a device tensor so CUDA does
        # not turn the division into a multiplication by 1/3.
        depth = ((corners[2] + corners[5]) + corners[8]).view(batch, count) / self._three
        order = torch.sort(-depth, dim=1, stable=True).indices  # (B, M): draw order, far first
        # frame * M + draw rank: ranks of different frames never meet on one canvas.
        rank = torch.empty_like(order).scatter_(1, order, ranks).view(-1)

        fixed = _fixed(corners.view(3, 3, -1)[:, :2])  # (3 corners, x y, B*M) in 1/16 pixel
        xv, yv = fixed[:, 0], fixed[:, 1]

        spare = batch * side * side
        itype = torch.int32 if spare < 1 << 31 else torch.int64
        best = torch.full((spare + 1,), -1, dtype=itype, device=self.device)
        # FillConvexPoly draws the edges (v2, v0), (v0, v1), (v1, v2) with Line2, in 16.16 ...
        fine = fixed << (XY_SHIFT - SUBPIXEL_BITS)
        start = fine.roll(1, 0)
        for index, value in _line2_pixels(
            start[:, 0].reshape(-1),
            start[:, 1].reshape(-1),
            fine[:, 0].reshape(-1),
            fine[:, 1].reshape(-1),
            size,
            base.repeat(3),
            rank.repeat(3),
            spare,
            itype,
        ):
            best.scatter_reduce_(0, index, value, "amax")
        # ... then fills its scanlines.
        index, value = self._span_pixels(xv, yv, base, rank, itype)
        best.scatter_reduce_(0, index, value, "amax")

        best = best[:spare].view(batch, side, side)[:, :size, :size].reshape(-1)
        pixel = (best >= 0).nonzero().squeeze(1)
        tri = (order + frame_offset).view(-1).index_select(0, best.index_select(0, pixel))
        return pixel, tri

    def _batch_constants(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B*M,) canvas base of each triangle, (B, M) ``frame * M + m``, (B, 1) ``frame * M``."""
        cached = self._constants.get(batch)
        if cached is None:
            count, side = self.triangles.shape[0], self.size + 1
            frame = torch.arange(batch, device=self.device)
            base = frame.repeat_interleave(count) * (side * side)
            ranks = torch.arange(batch * count, device=self.device).view(batch, count)
            cached = (base, ranks, (frame * count).view(batch, 1))
            if len(self._constants) >= 8:
                self._constants.clear()
            self._constants[batch] = cached
        return cached

    def _span_pixels(
        self, xv: torch.Tensor, yv: torch.Tensor, base: torch.Tensor, rank: torch.Tensor, itype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scanline spans of FillConvexPoly.

        Args:
            xv, yv: (3, K) int64 triangle corners in 1/16 pixel.
            base: (K,) flat index of each triangle's canvas (side S + 1).
            rank: (K,) draw rank of each triangle.
            itype: integer type of the ranks returned and of the per-pixel work.

        Returns:
            (T,) int64 flat canvas index and (T,) ``itype`` draw rank of every span pixel.
        """
        size, side = self.size, self.size + 1
        y0, y1, y2 = yv.unbind(0)
        first = torch.where(y2 < torch.minimum(y0, y1), 2, (y1 < y0).long())  # first smallest y
        corner = self._rotations.index_select(1, first)  # rows a, b, c
        x = xv.gather(0, corner) << (XY_SHIFT - SUBPIXEL_BITS)
        r = (yv.gather(0, corner) + _SUBPIXEL_HALF) >> SUBPIXEL_BITS
        ra = r[0]

        # OpenCV's rounded dx of the edges a->b, a->c, b->c, c->b.
        x_s, x_e = x.index_select(0, self._edge_from), x.index_select(0, self._edge_to)
        n = r.index_select(0, self._edge_to) - r.index_select(0, self._edge_from)
        n = torch.where(n == 0, 1, n)
        slopes = torch.div((x_e - x_s) * 2 + n, 2 * n, rounding_mode="trunc")

        x_min, x_max = torch.aminmax(xv, dim=0)
        x_min = (x_min + _SUBPIXEL_HALF) >> SUBPIXEL_BITS
        x_max = (x_max + _SUBPIXEL_HALF) >> SUBPIXEL_BITS
        r_max = torch.maximum(r[1], r[2])
        off_image = (x_max < 0) | (r_max < 0) | (x_min >= size) | (ra >= size)
        low = ra.clamp(min=0)
        counts = torch.where(off_image, 0, (r_max.clamp(max=size) - low).clamp(min=0))

        # Rows ra .. max(rb, rc) - 1: the left chain runs on a->b above rb and on b->c from there,
        # the right one on a->c above rc and on c->b from there; x = origin + (y - ra) * slope.
        tri, starts, _ = _items(counts)
        turn = r[1:] - ra
        params = torch.cat(
            [
                (low - ra - starts).unsqueeze(0),  # y - ra, less the row's place in the expansion
                turn,
                x[0].expand(2, -1),
                slopes[0:2],
                x[1:] - turn * slopes[2:4],
                slopes[2:4],
                (base + ra * side).unsqueeze(0),
                rank.unsqueeze(0),
            ]
        )
        # Gathered as rows (R, 13): on CPU much faster than along dim 1 or from a strided table.
        p = params.T.contiguous().index_select(0, tri).T
        dy = p[0] + torch.arange(tri.numel(), device=self.device)
        upper = p[5:7] * dy
        upper += p[3:5]
        lower = p[9:11] * dy
        lower += p[7:9]
        left, right = torch.where(dy < p[1:3], upper, lower).unbind(0)
        x1 = (torch.minimum(left, right) + _HALF) >> XY_SHIFT
        x2 = (torch.maximum(left, right) + _HALF) >> XY_SHIFT
        drawn = (x2 >= 0) & (x1 < size)
        x1 = x1.clamp(min=0)
        widths = torch.where(drawn, x2.clamp(max=size - 1) - x1 + 1, 0)

        row, starts, total = _items(widths, itype)
        # Pixel t of the expansion lies at t - starts[row] + the row's first pixel.
        first_pixel = p[11] + dy * side
        first_pixel += x1
        index = torch.arange(total, dtype=itype, device=self.device)
        index -= starts.to(itype).index_select(0, row)
        index += first_pixel.to(itype).index_select(0, row)
        return index.long(), p[12].to(itype).index_select(0, row)

    def _mouth_mask(self, pts: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) -> (B, S, S) bool: ``cv2.fillPoly`` of the inner-lip ring, LINE_8, shift 4."""
        batch, size = pts.shape[0], self.size
        mask = torch.zeros(batch, size, size, dtype=torch.bool, device=self.device)
        sides = self.inner_lip_ring.numel()
        if sides == 0:
            return mask
        ring = _fixed(pts.index_select(1, self.inner_lip_ring)[..., :2])  # (B, P, 2)
        x1 = ring[..., 0] << (XY_SHIFT - SUBPIXEL_BITS)
        y1 = (ring[..., 1] + _SUBPIXEL_HALF) >> SUBPIXEL_BITS
        x0, y0 = x1.roll(1, dims=1), y1.roll(1, dims=1)  # edge i runs from point i-1 to point i

        # CollectPolyEdges draws each edge between its pixel-rounded end points ...
        t0x, t1x = (x0 + _HALF) >> XY_SHIFT, (x1 + _HALF) >> XY_SHIFT
        clipped = _clip_line(size, size, t0x.reshape(-1), y0.reshape(-1), t1x.reshape(-1), y1.reshape(-1))
        segment, lx, ly = _line_pixels(*clipped)
        frame = torch.div(segment, sides, rounding_mode="floor")
        mask.view(-1)[frame * (size * size) + ly * size + lx] = True

        # ... and keeps a fill edge between those end points, as clipped to the image.
        c0x, c0y, c1x, c1y = (v.view(batch, sides) for v in clipped[1:])
        moved = c0y != c1y
        e0y, e1y = torch.where(moved, c0y, y0), torch.where(moved, c1y, y1)
        e0x, e1x = c0x << XY_SHIFT, c1x << XY_SHIFT
        dy = e1y - e0y
        dx = torch.div(e1x - e0x, torch.where(dy == 0, 1, dy), rounding_mode="trunc")
        down = y0 < y1
        top = torch.where(down, y0, y1)
        bottom = torch.where(down, y1, y0)
        start = torch.where(down, e0x + (y0 - e0y) * dx, e1x + (y1 - e1y) * dx)

        # FillEdgeCollection: per row, the x of the crossing edges, sorted, filled pairwise.
        low, high = torch.stack([top.min().clamp(min=0), bottom.max().clamp(max=size)]).tolist()
        if high <= low:
            return mask
        rows = torch.arange(low, high, device=self.device).view(1, -1, 1)
        top, bottom, start, dx = top[:, None, :], bottom[:, None, :], start[:, None, :], dx[:, None, :]
        crossing = (y0 != y1)[:, None, :] & (top <= rows) & (rows < bottom)
        xs = torch.where(crossing, start + (rows - top) * dx, _INACTIVE)
        if sides % 2:
            xs = torch.cat([xs, torch.full_like(xs[..., :1], _INACTIVE)], dim=2)
        xs = torch.sort(xs, dim=2).values
        a, b = xs[..., 0::2], xs[..., 1::2]
        first = (a + (1 << XY_SHIFT) - 1) >> XY_SHIFT
        last = b >> XY_SHIFT
        drawn = ((b < _INACTIVE) & (first < size) & (last >= 0)).to(torch.int32)
        steps = torch.zeros(batch, high - low, size + 1, dtype=torch.int32, device=self.device)
        steps.scatter_add_(2, first.clamp(min=0, max=size), drawn)
        steps.scatter_add_(2, last.clamp(min=-1, max=size - 1) + 1, -drawn)
        mask[:, low:high] |= steps.cumsum(dim=2)[..., :size] > 0
        return mask

    def _interpolate(self, corners: torch.Tensor, xy: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
        """Barycentric code of covered pixels, with NumPy's float32 operation order.

        Args:
            corners: (9, B*M) triangle corners (see :meth:`_corners`).
            xy: (2, P) float32 x and y of each covered pixel.
            tri: (P,) its triangle as ``frame * M + triangle``.

        Returns:
            (3, P) float32 code.
        """
        count = self.triangles.shape[0]
        ax, ay = corners[0], corners[1]
        v0x, v0y = corners[3] - ax, corners[4] - ay
        v1x, v1y = corners[6] - ax, corners[7] - ay
        den = v0x * v1y - v1x * v0y
        den = torch.where(den.abs() < 1e-9, 1e-9, den)
        table = torch.stack([ax, ay, v0x, v0y, v1x, v1y, den]).index_select(1, tri)
        ax, ay, v0x, v0y, v1x, v1y, den = table.unbind(0)
        v2x = xy[0] - ax
        v2y = xy[1] - ay
        w1 = (v2x * v1y - v1x * v2y) / den
        w2 = (v0x * v2y - v2x * v0y) / den
        bary = torch.stack([1 - w1 - w2, w1, w2]).clamp_(0.0, 1.0)
        bary /= ((bary[0] + bary[1]) + bary[2]).clamp_(min=1e-6)
        code = self._corner_code.index_select(1, tri % count)  # (9, P)
        out = bary[0] * code[0:3]
        out += bary[1] * code[3:6]
        out += bary[2] * code[6:9]
        return out
