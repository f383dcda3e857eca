"""What streaming needs to know of an avatar's mouth and reference frames, frame by frame.

The avatar's most closed mouth (the voice gate closes towards it), the opening of a predicted
mouth (the inner-lip area, reported per frame) and full reference frames for the idle image
(decoded on demand with a small LRU cache). The images around the renderer are made in batches
on the backend's device by :mod:`engines.device_frames`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import numpy.typing as npt

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
    """Mouth geometry and full reference frames of one avatar; safe to use from several threads
    (the full-frame LRU is locked)."""

    def __init__(self, bundle: AvatarBundle) -> None:
        self.bundle = bundle
        reference = bundle.reference
        self.reference = reference
        self.frames = len(reference)
        self.mouth_std = np.maximum(bundle.face_model.mouth_std, 1e-6).astype(np.float32)
        self._ring = list(anchors_for(bundle.face_model.layout).inner_lip_ring)
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
