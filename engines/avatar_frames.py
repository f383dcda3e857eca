"""Per-frame work around the networks when an avatar is driven frame by frame (streaming).

For an output frame played over reference frame ``r`` with predicted mouth parameters: the face
shape, the eroded reference and the paste of the rendered crop back into the full reference
frame, all built by :mod:`engines.render_io` (the one definition training and offline rendering
use too). Reference crops, masks and paste weights are cached in memory once; full frames are
decoded on demand with a small LRU cache (ping-pong playback reads them in order).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import numpy.typing as npt

from engines import render_io
from engines.bundle import AvatarBundle
from engines.geometry.layouts import anchors_for

FloatArray = npt.NDArray[np.float32]
ImageRGB = npt.NDArray[np.uint8]
FULL_FRAME_CACHE = 32


def _ring_area(ring: FloatArray) -> FloatArray:
    """(...,) shoelace area of (..., K, 2) closed polygons."""
    x, y = ring[..., 0], ring[..., 1]
    area: FloatArray = 0.5 * np.abs((x * np.roll(y, -1, axis=-1) - np.roll(x, -1, axis=-1) * y).sum(-1))
    return area


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
        self._ring = list(anchors_for(bundle.face_model.layout).inner_lip_ring)
        self._eroded: dict[int, FloatArray] = {}
        self._masks: dict[int, npt.NDArray[np.uint8]] = {}
        self._paste: dict[int, FloatArray] = {}
        self._full: OrderedDict[int, ImageRGB] = OrderedDict()
        self._full_lock = threading.Lock()
        self.rest_mouth = self._rest_mouth()

    def _rest_mouth(self) -> FloatArray:
        """(Em,) raw mouth parameters of the reference frame with the most closed mouth."""
        model = self.bundle.face_model
        shapes = model.shapes(self.reference.mouth_params, self.reference.upper_params)
        rest: FloatArray = self.reference.mouth_params[int(np.argmin(_ring_area(shapes[:, self._ring, :2])))]
        return rest.copy()

    def inner_lip_area(self, mouth_params: FloatArray, reference_index: int = 0) -> float:
        """Area inside the inner-lip ring (canonical units) for raw mouth parameters (Em,)."""
        return float(self.inner_lip_areas(mouth_params[None], np.array([reference_index]))[0])

    def inner_lip_areas(
        self, mouth_params: FloatArray, reference_indices: npt.NDArray[np.int64]
    ) -> FloatArray:
        """(N,) areas inside the inner-lip ring (canonical units) for raw mouth parameters (N, Em)
        over the upper faces of the given (N,) reference frames."""
        shapes = self.bundle.face_model.shapes(mouth_params, self.reference.upper_params[reference_indices])
        return _ring_area(shapes[:, self._ring, :2])

    def face_shape(self, reference_index: int, mouth_params: FloatArray) -> FloatArray:
        """(4, S, S) face shape in [0, 1]: reference pose and upper face, the given raw mouth (Em,)."""
        index = np.array([reference_index])
        reference = self.reference
        shapes = render_io.face_shapes(
            self.bundle.face_model,
            self.box,
            self.size,
            reference.pose.select(index),
            mouth_params[None],
            reference.upper_params[index],
        )
        shape: FloatArray = shapes[0]
        return shape

    def mask(self, reference_index: int) -> npt.NDArray[np.uint8]:
        """(S, S) uint8 mouth mask of a reference frame, 255 inside."""
        if reference_index not in self._masks:
            self._masks[reference_index] = self.reference.mouth_mask(reference_index)
        return self._masks[reference_index]

    def eroded(self, reference_index: int) -> FloatArray:
        """(3, S, S) eroded reference crop in [-1, 1]."""
        if reference_index not in self._eroded:
            self._eroded[reference_index] = render_io.eroded_input(
                self.reference.crop(reference_index), self.mask(reference_index)
            )
        return self._eroded[reference_index]

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

    def paste(self, reference_index: int, rendered: FloatArray, ai_mark: bool = False) -> ImageRGB:
        """Paste a rendered crop (3, S, S) in [-1, 1] into the full reference frame → (H, W, 3) uint8,
        with the "AI-generated" mark when ``ai_mark``."""
        if reference_index not in self._paste:
            self._paste[reference_index] = render_io.paste_weights(self.mask(reference_index))
        return render_io.paste_rendered(
            self.full_frame(reference_index), rendered, self.box, self._paste[reference_index], ai_mark
        )
