"""Per-frame work around the networks when an avatar is driven frame by frame.

For an output frame played over reference frame ``r`` with predicted mouth parameters: the face
shape (reference pose and upper face, predicted mouth, rasterised in the crop), the eroded
reference crop (mouth mask set to mid grey), and the paste of the rendered crop back into the
full reference frame. Reference crops, masks and paste weights are cached in memory once; full
frames are decoded on demand with a small LRU cache (ping-pong playback reads them in order).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import numpy.typing as npt

from engines.bundle import AvatarBundle
from engines.geometry.crop import paste_back
from engines.geometry.layouts import anchors_for
from engines.geometry.masks import paste_mask
from engines.geometry.raster import rasterize_face_shape

FloatArray = npt.NDArray[np.float32]
ImageRGB = npt.NDArray[np.uint8]
ERODED_GREY = 127
FULL_FRAME_CACHE = 32


class AvatarFrames:
    """Face shapes, eroded references and paste-back for one avatar; safe to use from several
    threads (caches fill idempotently, the full-frame LRU is locked)."""

    def __init__(self, bundle: AvatarBundle) -> None:
        self.bundle = bundle
        self.size = bundle.config.renderer.image_size
        self.box = bundle.crop_box
        reference = bundle.reference
        self.reference = reference
        self.frames = len(reference)
        self.mouth_std = np.maximum(bundle.face_model.mouth_std, 1e-6).astype(np.float32)
        self._ring = anchors_for(bundle.face_model.layout).inner_lip_ring
        self._crops: dict[int, FloatArray] = {}
        self._masks: dict[int, npt.NDArray[np.uint8]] = {}
        self._paste: dict[int, FloatArray] = {}
        self._full: OrderedDict[int, ImageRGB] = OrderedDict()
        self._full_lock = threading.Lock()
        self.rest_mouth = self._rest_mouth()

    def _rest_mouth(self) -> FloatArray:
        """(Em,) raw mouth parameters of the reference frame with the most closed mouth."""
        model = self.bundle.face_model
        shapes = model.shapes(self.reference.mouth_params, self.reference.upper_params)
        ring = shapes[:, list(self._ring), :2]
        x, y = ring[..., 0], ring[..., 1]
        area = 0.5 * np.abs((x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(1))
        rest: FloatArray = self.reference.mouth_params[int(np.argmin(area))].copy()
        return rest

    def mouth_opening(self, mouth_params: FloatArray, reference_index: int = 0) -> float:
        """Area of the inner-lip ring (canonical units) for raw mouth parameters (Em,)."""
        model = self.bundle.face_model
        shape = model.shapes(
            mouth_params[None], self.reference.upper_params[reference_index : reference_index + 1]
        )[0]
        ring = shape[list(self._ring), :2]
        x, y = ring[:, 0], ring[:, 1]
        return float(0.5 * abs((x * np.roll(y, -1) - np.roll(x, -1) * y).sum()))

    def face_shape(self, reference_index: int, mouth_params: FloatArray) -> FloatArray:
        """(4, S, S) face shape in [0, 1]: reference pose and upper face, the given raw mouth (Em,)."""
        model, reference = self.bundle.face_model, self.reference
        canonical = model.shapes(
            mouth_params[None], reference.upper_params[reference_index : reference_index + 1]
        )
        posed = reference.pose.select(np.array([reference_index])).apply(canonical)[0]
        image = rasterize_face_shape(
            self.box.to_crop_points(posed, self.size),
            model.triangles,
            model.vertex_code,
            self._ring,
            self.size,
        )
        return np.ascontiguousarray(image.transpose(2, 0, 1))

    def mask(self, reference_index: int) -> npt.NDArray[np.uint8]:
        """(S, S) uint8 mouth mask of a reference frame, 255 inside."""
        if reference_index not in self._masks:
            self._masks[reference_index] = self.reference.mouth_mask(reference_index)
        return self._masks[reference_index]

    def eroded(self, reference_index: int) -> FloatArray:
        """(3, S, S) eroded reference crop in [-1, 1]: the mouth mask region set to mid grey."""
        if reference_index not in self._crops:
            crop = self.reference.crop(reference_index).copy()
            crop[self.mask(reference_index) > 0] = ERODED_GREY
            self._crops[reference_index] = np.ascontiguousarray(
                crop.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
            )
        return self._crops[reference_index]

    def full_frame(self, reference_index: int) -> ImageRGB:
        """(H, W, 3) full reference frame (LRU cached)."""
        with self._full_lock:
            cached = self._full.get(reference_index)
            if cached is not None:
                self._full.move_to_end(reference_index)
                return cached
        cached = self.reference.full_frame(reference_index)
        with self._full_lock:
            self._full[reference_index] = cached
            while len(self._full) > FULL_FRAME_CACHE:
                self._full.popitem(last=False)
        return cached

    def paste(self, reference_index: int, rendered: FloatArray) -> ImageRGB:
        """Paste a rendered crop (3, S, S) in [-1, 1] into the full reference frame → (H, W, 3) uint8."""
        if reference_index not in self._paste:
            self._paste[reference_index] = paste_mask(self.mask(reference_index))
        crop = np.clip((rendered.transpose(1, 2, 0) + 1.0) * 127.5, 0, 255).astype(np.uint8)
        return paste_back(self.full_frame(reference_index), crop, self.box, self._paste[reference_index])
