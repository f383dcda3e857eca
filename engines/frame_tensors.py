"""Batched tensor form of the per-frame image work around the renderer (erosion, paste-back, mark).

:mod:`engines.render_io` defines the renderer's inputs and outputs one frame at a time with numpy
and OpenCV; a server that renders many sessions' frames in one batch needs the same numbers for a
whole batch as a few tensor operations on the backend's device (CPU or CUDA, same code). This
module reproduces them:

- **Eroded references** are bit-identical: cached per reference frame as uint8, turned into
  [-1, 1] through a 256-entry table computed by :func:`render_io.to_signed` itself.
- **Paste-back** reproduces :func:`engines.geometry.crop.paste_back` pixel for pixel. The crop box
  is fixed per avatar, so the inverse warp of the rendered crop into the frame region the box
  covers is the same for every frame: its source taps (4 neighbours, clamped = border replicate)
  and integer weights are computed once, following OpenCV 4.11's ``warpAffine`` / ``remap``
  INTER_LINEAR for 8-bit images: the inverted matrix quantised to 1/1024 pixel, positions rounded
  to 1/32 pixel (``INTER_BITS`` = 5), 15-bit fixed-point weights from OpenCV's bilinear table and
  round-to-nearest. The sums are integers below 2**24, so float32 carries them exactly on any
  device and in any summation order. The blend weights (the paste mask warped as float32) depend
  only on the reference frame, so they are computed once per frame with OpenCV itself and cached
  on the device; the blend and the "AI-generated" mark then run the same float32 operations, in
  the same order, as the numpy code.
- Full reference frames, eroded crops and blend weights are cached on the device lazily, per
  reference frame, the first time a frame is used (or all at once with :meth:`FrameTensors.preload`).
  Once every frame is cached, no call reads the indices back to the host (no device sync).

Memory on the device: F reference frames of H x W take F·H·W·3 bytes for the full frames,
F·R² ·4 bytes for the blend weights (R: the box's side in frame pixels) and F·S²·3 bytes for the
eroded crops (S: the renderer's side). The default avatar (200 frames of 256x256, S = 128) needs
about 78 MB.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import cv2
import numpy as np
import numpy.typing as npt
import torch

from engines import render_io
from engines.ai_mark import _overlay
from engines.bundle import AvatarBundle
from engines.geometry.crop import CropBox

ImageRGB = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]
WarpMethod = Literal["auto", "sparse", "gather"]

# OpenCV's fixed-point constants for INTER_LINEAR warps of 8-bit images (imgproc/src/imgwarp.cpp).
_AB_BITS = 10
_INTER_BITS = 5
_INTER_TAB_SIZE = 1 << _INTER_BITS
_REMAP_COEF_BITS = 15
_REMAP_COEF_SCALE = 1 << _REMAP_COEF_BITS


class ReferenceSource(Protocol):
    """What :class:`FrameTensors` reads of an avatar's reference video (``ReferenceFrames`` fits)."""

    def __len__(self) -> int: ...

    def crop(self, index: int) -> ImageRGB:
        """(S, S, 3) uint8 RGB reference crop."""
        ...

    def full_frame(self, index: int) -> ImageRGB:
        """(H, W, 3) uint8 RGB full reference frame."""
        ...

    def mouth_mask(self, index: int) -> Mask:
        """(S, S) uint8 erosion mask, 255 inside."""
        ...


@dataclass(frozen=True)
class _ArrayReference:
    """A reference video held in arrays (tests, synthetic avatars)."""

    crops: Sequence[ImageRGB]
    full_frames: Sequence[ImageRGB]
    masks: Sequence[Mask]

    def __len__(self) -> int:
        return len(self.crops)

    def crop(self, index: int) -> ImageRGB:
        return self.crops[index]

    def full_frame(self, index: int) -> ImageRGB:
        return self.full_frames[index]

    def mouth_mask(self, index: int) -> Mask:
        return self.masks[index]


@dataclass(frozen=True)
class _Region:
    """The part of the full frame the crop box covers (as :func:`paste_back` clips it)."""

    x0: int
    y0: int
    x1: int
    y1: int
    inverse: npt.NDArray[np.float64]  # (2, 3) crop -> region pixels, as passed to cv2.warpAffine

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def empty(self) -> bool:
        return self.width <= 0 or self.height <= 0


def _region(box: CropBox, size: int, height: int, width: int) -> _Region:
    x0, y0 = max(0, int(np.floor(box.x0))), max(0, int(np.floor(box.y0)))
    x1 = min(width, int(np.ceil(box.x0 + box.size)))
    y1 = min(height, int(np.ceil(box.y0 + box.size)))
    inverse = np.asarray(cv2.invertAffineTransform(box.matrix(size)), dtype=np.float64)
    inverse[:, 2] -= (x0, y0)
    return _Region(x0, y0, x1, y1, inverse)


def _bilinear_table() -> npt.NDArray[np.int64]:
    """(32, 32, 4) OpenCV's fixed-point bilinear weights (sum 2**15) per (y, x) 1/32 sub-pixel
    position, in the order (y0x0, y0x1, y1x0, y1x1)."""
    step = np.float32(1.0 / _INTER_TAB_SIZE)
    one_d = [(np.float32(1.0) - np.float32(i) * step, np.float32(i) * step) for i in range(_INTER_TAB_SIZE)]
    table = np.zeros((_INTER_TAB_SIZE, _INTER_TAB_SIZE, 4), np.int64)
    for i in range(_INTER_TAB_SIZE):
        for j in range(_INTER_TAB_SIZE):
            weights = [
                int(np.rint(np.float64(np.float32(wy * wx)) * _REMAP_COEF_SCALE))
                for wy in one_d[i]
                for wx in one_d[j]
            ]
            # OpenCV moves any rounding excess onto the largest or smallest weight; for the
            # bilinear table the rounded weights already sum to the scale.
            if sum(weights) != _REMAP_COEF_SCALE:
                raise AssertionError("bilinear fixed-point table does not sum to its scale")
            table[i, j] = weights
    return table


def _warp_taps(region: _Region, size: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Source taps and weights of ``cv2.warpAffine(crop, region.inverse, ..., INTER_LINEAR,
    BORDER_REPLICATE)`` for an 8-bit (size, size) crop.

    Returns:
        (4, P) flat source pixel indices into the crop (row-major, clamped to the crop) and (4, P)
        float32 weights: OpenCV's 15-bit integers times 2**-15 (each column sums to 1), P = h x w.
    """
    # warpAffine without WARP_INVERSE_MAP inverts the matrix itself, in double, like this.
    m = [float(v) for v in region.inverse.reshape(-1)]
    det = m[0] * m[4] - m[1] * m[3]
    det = 1.0 / det if det != 0 else 0.0
    a11, a22 = m[4] * det, m[0] * det
    m[0], m[1], m[3], m[4] = a11, m[1] * -det, m[3] * -det, a22
    m[2], m[5] = -m[0] * m[2] - m[1] * m[5], -m[3] * m[2] - m[4] * m[5]

    scale = 1 << _AB_BITS
    round_delta = scale // _INTER_TAB_SIZE // 2
    x = np.arange(region.width, dtype=np.float64)
    y = np.arange(region.height, dtype=np.float64)
    # saturate_cast<int>(double) rounds half to even, as np.rint does.
    adelta = np.rint(m[0] * x * scale).astype(np.int64)
    bdelta = np.rint(m[3] * x * scale).astype(np.int64)
    x_row = np.rint((m[1] * y + m[2]) * scale).astype(np.int64) + round_delta
    y_row = np.rint((m[4] * y + m[5]) * scale).astype(np.int64) + round_delta
    shift = _AB_BITS - _INTER_BITS
    fx = (x_row[:, None] + adelta[None, :]) >> shift
    fy = (y_row[:, None] + bdelta[None, :]) >> shift
    ix, iy = fx >> _INTER_BITS, fy >> _INTER_BITS
    weights = _bilinear_table()[fy & (_INTER_TAB_SIZE - 1), fx & (_INTER_TAB_SIZE - 1)]  # (h, w, 4)

    def clamp(v: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return np.clip(v, 0, size - 1)

    taps = np.stack(
        [
            clamp(iy) * size + clamp(ix),
            clamp(iy) * size + clamp(ix + 1),
            clamp(iy + 1) * size + clamp(ix),
            clamp(iy + 1) * size + clamp(ix + 1),
        ]
    ).reshape(4, -1)
    return taps, np.ascontiguousarray(weights.reshape(-1, 4).T / _REMAP_COEF_SCALE, dtype=np.float32)


def _warp_matrix(
    taps: npt.NDArray[np.int64], weights: npt.NDArray[np.float32], size: int, device: torch.device
) -> torch.Tensor:
    """The warp as a (P, S*S) sparse CSR matrix of integer weights (duplicate taps of clamped
    borders summed, zero weights dropped)."""
    pixels = taps.shape[1]
    rows = np.broadcast_to(np.arange(pixels, dtype=np.int64), taps.shape)
    keys, inverse = np.unique(rows * (size * size) + taps, return_inverse=True)
    values = np.bincount(inverse.reshape(-1), weights=weights.reshape(-1).astype(np.float64))
    keep = values != 0
    keys, values = keys[keep], values[keep]
    crow = np.concatenate([[0], np.cumsum(np.bincount(keys // (size * size), minlength=pixels))])
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Sparse CSR tensor support is in beta", category=UserWarning
        )
        return torch.sparse_csr_tensor(
            torch.from_numpy(crow),
            torch.from_numpy(keys % (size * size)),
            torch.from_numpy(values.astype(np.float32)),
            (pixels, size * size),
            check_invariants=True,
        ).to(device)


def _paste_alpha(mask: Mask, region: _Region) -> FloatArray:
    """(h, w) float32 blend weights of the region, exactly as :func:`paste_back` warps them."""
    weights = render_io.paste_weights(mask).astype(np.float32)
    alpha = cv2.warpAffine(
        weights, region.inverse, (region.width, region.height), flags=cv2.INTER_LINEAR, borderValue=(0.0,)
    )
    return np.asarray(alpha, dtype=np.float32)


class FrameTensors:
    """One avatar's reference images as tensors on a device: batched eroded inputs and paste-back.

    Safe to use from several threads: caches fill under a lock, idempotently.
    """

    def __init__(
        self, bundle: AvatarBundle, device: torch.device | str = "cpu", *, warp: WarpMethod = "auto"
    ) -> None:
        """Args:
        bundle: the loaded avatar (its reference video and crop box).
        device: where the caches live and the work runs.
        warp: how the rendered crop is warped: ``"sparse"`` (a sparse matrix product, the fastest
            on CPUs), ``"gather"`` (dense gathers) or ``"auto"`` (sparse on CPU, else gather).
            Both give the same numbers.
        """
        self._setup(bundle.reference, bundle.crop_box, bundle.config.renderer.image_size, device, warp)

    @classmethod
    def from_reference(
        cls,
        reference: ReferenceSource,
        box: CropBox,
        size: int,
        device: torch.device | str = "cpu",
        *,
        warp: WarpMethod = "auto",
    ) -> FrameTensors:
        """Build from any reference video (crops and masks at the renderer's side ``size``)."""
        self = cls.__new__(cls)
        self._setup(reference, box, size, device, warp)
        return self

    @classmethod
    def from_arrays(
        cls,
        crops: Sequence[ImageRGB],
        full_frames: Sequence[ImageRGB],
        masks: Sequence[Mask],
        box: CropBox,
        device: torch.device | str = "cpu",
        *,
        warp: WarpMethod = "auto",
    ) -> FrameTensors:
        """Build from arrays: F (S, S, 3) uint8 crops, F (H, W, 3) uint8 full frames and F (S, S)
        uint8 erosion masks (255 inside)."""
        if not (len(crops) == len(full_frames) == len(masks)) or len(crops) == 0:
            raise ValueError("crops, full frames and masks must be as many, and at least one")
        return cls.from_reference(
            _ArrayReference(crops, full_frames, masks), box, crops[0].shape[0], device, warp=warp
        )

    def _setup(
        self,
        reference: ReferenceSource,
        box: CropBox,
        size: int,
        device: torch.device | str,
        warp: WarpMethod,
    ) -> None:
        self.device = torch.device(device)
        self.reference = reference
        self.box = box
        self.size = size
        self.frames = len(reference)
        if self.frames == 0:
            raise ValueError("the reference video has no frames")
        first = reference.full_frame(0)
        self.height, self.width = int(first.shape[0]), int(first.shape[1])
        self._region = _region(box, size, self.height, self.width)
        self._lock = threading.Lock()
        self._masks: dict[int, Mask] = {}

        signed_table = render_io.to_signed(np.arange(256, dtype=np.uint8).reshape(1, 256, 1))
        self._signed = torch.from_numpy(signed_table.reshape(256).copy()).to(self.device)

        region = self._region
        if warp not in ("auto", "sparse", "gather"):
            raise ValueError(f"warp must be 'auto', 'sparse' or 'gather', got {warp!r}")
        # A sparse product is the fastest on CPUs; gathers are plain dense kernels elsewhere
        # (and can be captured in CUDA graphs).
        self.warp_method: Literal["sparse", "gather"] = (
            ("sparse" if self.device.type == "cpu" else "gather") if warp == "auto" else warp
        )
        self._taps = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._weights = torch.zeros(4, 0, 0, 1, 1, dtype=torch.float32, device=self.device)
        self._matrix: torch.Tensor | None = None
        if not region.empty:
            taps, weights = _warp_taps(region, size)
            if self.warp_method == "sparse":
                self._matrix = _warp_matrix(taps, weights, size, self.device)
            else:
                self._taps = torch.from_numpy(taps.reshape(-1)).to(self.device)
                self._weights = (
                    torch.from_numpy(weights).to(self.device).view(4, region.height, region.width, 1, 1)
                )

        overlay = _overlay(self.height, self.width)
        self._mark: tuple[int, int, torch.Tensor, torch.Tensor] | None = None
        if overlay is not None:
            keep = (1 - overlay.alpha).astype(np.float32)  # as apply_ai_mark computes it
            self._mark = (
                overlay.top,
                overlay.left,
                torch.from_numpy(keep).to(self.device),
                torch.from_numpy(overlay.colour).to(self.device),
            )

        # Device caches, allocated on first use, filled per reference frame.
        self._full: torch.Tensor | None = None  # (F, H, W, 3) uint8
        self._alpha: torch.Tensor | None = None  # (F, h, w, 1) float32
        self._eroded: torch.Tensor | None = None  # (F, 3, S, S) uint8
        self._have_paste = np.zeros(self.frames, dtype=bool)
        self._have_eroded = np.zeros(self.frames, dtype=bool)
        self._all_paste = False
        self._all_eroded = False

    # ---- caches

    def _mask(self, index: int) -> Mask:
        mask = self._masks.get(index)
        if mask is None:
            mask = self._masks[index] = np.asarray(self.reference.mouth_mask(index), dtype=np.uint8)
        return mask

    def _host_indices(self, reference_indices: torch.Tensor) -> npt.NDArray[np.int64]:
        if reference_indices.ndim != 1:
            raise ValueError(f"reference indices must be 1-D, got shape {tuple(reference_indices.shape)}")
        indices = reference_indices.detach().to("cpu", torch.int64).numpy()
        if len(indices) and (indices.min() < 0 or indices.max() >= self.frames):
            raise IndexError(
                f"reference indices must be in [0, {self.frames}), got {indices.min()}..{indices.max()}"
            )
        return indices

    def _fill_paste(self, indices: npt.NDArray[np.int64]) -> None:
        missing = np.unique(indices[~self._have_paste[indices]])
        if len(missing) == 0:
            return
        with self._lock:
            region = self._region
            if self._full is None:
                self._full = torch.empty(
                    self.frames, self.height, self.width, 3, dtype=torch.uint8, device=self.device
                )
                self._alpha = torch.empty(
                    self.frames,
                    max(region.height, 0),
                    max(region.width, 0),
                    1,
                    dtype=torch.float32,
                    device=self.device,
                )
            assert self._alpha is not None
            for index in missing.tolist():
                if self._have_paste[index]:
                    continue
                frame = np.asarray(self.reference.full_frame(index), dtype=np.uint8)
                if frame.shape != (self.height, self.width, 3):
                    raise ValueError(
                        f"reference frame {index} is {frame.shape}, not {(self.height, self.width, 3)}"
                    )
                self._full[index] = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device)
                if not region.empty:
                    alpha = _paste_alpha(self._mask(index), region)
                    self._alpha[index] = torch.from_numpy(alpha[..., None]).to(self.device)
                self._have_paste[index] = True
            self._all_paste = bool(self._have_paste.all())

    def _fill_eroded(self, indices: npt.NDArray[np.int64]) -> None:
        missing = np.unique(indices[~self._have_eroded[indices]])
        if len(missing) == 0:
            return
        with self._lock:
            if self._eroded is None:
                self._eroded = torch.empty(
                    self.frames, 3, self.size, self.size, dtype=torch.uint8, device=self.device
                )
            for index in missing.tolist():
                if self._have_eroded[index]:
                    continue
                crop = np.asarray(self.reference.crop(index), dtype=np.uint8)
                if crop.shape != (self.size, self.size, 3):
                    raise ValueError(
                        f"reference crop {index} is {crop.shape}, not {(self.size, self.size, 3)}"
                    )
                eroded = render_io.erode(crop, self._mask(index))
                self._eroded[index] = torch.from_numpy(np.ascontiguousarray(eroded.transpose(2, 0, 1))).to(
                    self.device
                )
                self._have_eroded[index] = True
            self._all_eroded = bool(self._have_eroded.all())

    def preload(self, reference_indices: torch.Tensor | None = None) -> None:
        """Fill every cache for the given (N,) reference indices (default: all frames) now, so later
        calls neither decode images nor read indices back from the device."""
        if reference_indices is None:
            reference_indices = torch.arange(self.frames)
        indices = self._host_indices(reference_indices)
        self._fill_eroded(indices)
        self._fill_paste(indices)

    def _device_indices(self, reference_indices: torch.Tensor, complete: bool, paste: bool) -> torch.Tensor:
        if not complete:
            indices = self._host_indices(reference_indices)
            (self._fill_paste if paste else self._fill_eroded)(indices)
        elif reference_indices.ndim != 1:
            raise ValueError(f"reference indices must be 1-D, got shape {tuple(reference_indices.shape)}")
        elif reference_indices.device.type == "cpu" and len(reference_indices):
            low, high = int(reference_indices.min()), int(reference_indices.max())
            if low < 0 or high >= self.frames:
                raise IndexError(f"reference indices must be in [0, {self.frames}), got {low}..{high}")
        return reference_indices.to(self.device, torch.int64, non_blocking=True)

    # ---- the batched work

    @torch.no_grad()
    def eroded(self, reference_indices: torch.Tensor) -> torch.Tensor:
        """(N,) int64 -> (N, 3, S, S) float32 eroded reference crops in [-1, 1] on the device
        (equal to :func:`render_io.eroded_input` of each frame's crop and mask)."""
        index = self._device_indices(reference_indices, self._all_eroded, paste=False)
        if len(index) == 0:
            return torch.zeros(0, 3, self.size, self.size, dtype=torch.float32, device=self.device)
        assert self._eroded is not None
        pixels = self._eroded.index_select(0, index)
        return self._signed.index_select(0, pixels.reshape(-1).to(torch.int32)).view(pixels.shape)

    @torch.no_grad()
    def paste(self, reference_indices: torch.Tensor, rendered: torch.Tensor, ai_mark: bool) -> torch.Tensor:
        """Paste rendered crops into their full reference frames.

        Args:
            reference_indices: (N,) int64 reference frame of each output frame.
            rendered: (N, 3, S, S) float renderer output in [-1, 1], on the device.
            ai_mark: draw the "AI-generated" mark on the results.

        Returns:
            (N, H, W, 3) uint8 full frames on the device: per frame what
            ``render_io.paste_rendered(full_frame(i), rendered[n], box, paste_weights(mask(i)), ai_mark)``
            returns (reproduced exactly for OpenCV 4.11's fixed-point warp; within one grey level).
        """
        if reference_indices.ndim != 1:
            raise ValueError(f"reference indices must be 1-D, got shape {tuple(reference_indices.shape)}")
        count = int(reference_indices.shape[0])
        if rendered.shape != (count, 3, self.size, self.size):
            raise ValueError(
                f"rendered must be ({count}, 3, {self.size}, {self.size}) for {count} indices, "
                f"got {tuple(rendered.shape)}"
            )
        index = self._device_indices(reference_indices, self._all_paste, paste=True)
        if count == 0:
            return torch.zeros(0, self.height, self.width, 3, dtype=torch.uint8, device=self.device)
        assert self._full is not None and self._alpha is not None
        frames = self._full.index_select(0, index)  # a new tensor: the caches stay untouched
        region = self._region
        if not region.empty:
            # All the region's work runs in the (h, w, N, 3) order the warp produces.
            target = frames[:, region.y0 : region.y1, region.x0 : region.x1].permute(1, 2, 0, 3)
            patch = target.to(torch.float32)
            alpha = self._alpha.index_select(0, index).permute(1, 2, 0, 3)
            # patch + alpha * (warped - patch) + 0.5 in paste_back's order; within [0, 256), so
            # the cast truncates as its clip + astype(uint8) does.
            blended = self._warp(rendered.to(self.device, torch.float32)).sub_(patch)
            blended.mul_(alpha).add_(patch).add_(0.5)
            target.copy_(blended)
        if ai_mark and self._mark is not None:
            top, left, keep, colour = self._mark
            rows, cols = slice(top, top + keep.shape[0]), slice(left, left + keep.shape[1])
            marked = frames[:, rows, cols].to(torch.float32) * keep + colour + 0.5
            frames[:, rows, cols] = marked.clamp_(0, 255).to(torch.uint8)
        return frames

    def _warp(self, rendered: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) float32 in [-1, 1] -> (h, w, N, 3) float32 integer pixel values of the
        region (a new tensor): :func:`render_io.to_image`, then OpenCV's 8-bit INTER_LINEAR warp."""
        count, size = rendered.shape[0], self.size
        height, width = self._region.height, self._region.width
        # to_image: clip((x + 1) * 127.5, 0, 255) truncated to uint8, kept as float.
        pixels = (rendered + 1.0).mul_(127.5).clamp_(0, 255).trunc_()
        # The weights are OpenCV's 15-bit integers times 2**-15: sums of 4 products with uint8
        # values, plus 0.5, are integers below 2**24 times 2**-15, exact in float32 in any order,
        # so flooring gives OpenCV's (sum + 2**14) >> 15.
        if self._matrix is not None:
            columns = pixels.permute(2, 3, 0, 1).reshape(size * size, count * 3)
            acc: torch.Tensor = torch.sparse.mm(self._matrix, columns).view(height, width, count, 3)
        else:
            flat = pixels.permute(2, 3, 0, 1).reshape(size * size, count, 3)
            taps = flat.index_select(0, self._taps).view(4, height, width, count, 3)
            acc = (taps * self._weights).sum(0)
        return acc.add_(0.5).floor_()
