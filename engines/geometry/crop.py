"""The fixed per-avatar crop box: crop to the renderer's size, paste the rendered crop back.

Rendering happens in a square crop around the face; the result goes back into the full frame
through a feathered mask, so a full-HD avatar costs the same to render as a 256x256 one. The box
is fixed for the whole avatar (the head moves inside it), chosen from the median face box.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import numpy.typing as npt

from engines.errors import InputError

FloatArray = npt.NDArray[np.float32]
ImageRGB = npt.NDArray[np.uint8]

DEFAULT_MARGIN = 0.4
DEFAULT_FEATHER = 0.08


@dataclass(frozen=True)
class CropBox:
    """A square region of the full frame, in full-frame pixels (may extend past its edges).

    Attributes:
        x0, y0: top-left corner.
        size: side length.
    """

    x0: float
    y0: float
    size: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> CropBox:
        return cls(float(data["x0"]), float(data["y0"]), float(data["size"]))

    def matrix(self, out_size: int) -> npt.NDArray[np.float64]:
        """(2, 3) affine taking full-frame pixel centres to crop pixel centres at ``out_size``."""
        scale = out_size / self.size
        return np.array(
            [
                [scale, 0.0, (0.5 - self.x0) * scale - 0.5],
                [0.0, scale, (0.5 - self.y0) * scale - 0.5],
            ]
        )

    def to_crop_points(self, points: FloatArray, out_size: int) -> FloatArray:
        """Map (..., D>=2) full-frame points into crop pixels; a third coordinate is scaled alike."""
        scale = out_size / self.size
        out = points.astype(np.float32).copy()
        out[..., 0] = (points[..., 0] + 0.5 - self.x0) * scale - 0.5
        out[..., 1] = (points[..., 1] + 0.5 - self.y0) * scale - 0.5
        if points.shape[-1] > 2:
            out[..., 2] = points[..., 2] * scale
        return out

    def crop(self, frame: ImageRGB, out_size: int) -> ImageRGB:
        """Cut the box out of ``frame`` (H, W, C) and resize it to (out_size, out_size, C).

        Parts of the box outside the frame repeat the frame's border pixels.
        """
        shrinking = self.size > out_size
        result = cv2.warpAffine(
            frame,
            self.matrix(out_size),
            (out_size, out_size),
            flags=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return np.asarray(result, dtype=np.uint8)


def crop_box_from_landmarks(
    landmarks: FloatArray, frame_width: int, frame_height: int, margin: float = DEFAULT_MARGIN
) -> CropBox:
    """The fixed box for an avatar: median face box, squared, enlarged by ``margin`` per side.

    Args:
        landmarks: (T, N, >=2) tracked points of the frames with a face.
        frame_width, frame_height: full-frame size; the box is kept as much inside as it fits.
        margin: added to each side as a fraction of the face box's longer side.

    Returns:
        The square box in full-frame pixels.
    """
    if landmarks.ndim != 3 or len(landmarks) == 0:
        raise InputError("no tracked face to place the crop box on")
    low = landmarks[..., :2].min(1)
    high = landmarks[..., :2].max(1)
    centre = np.median((low + high) / 2, axis=0)
    side = float(np.median((high - low).max(1))) * (1 + 2 * margin)
    x0 = float(centre[0]) - side / 2
    y0 = float(centre[1]) - side / 2
    # Slide the box inside the frame where it fits; a box larger than the frame stays centred.
    if side <= frame_width:
        x0 = min(max(x0, 0.0), frame_width - side)
    if side <= frame_height:
        y0 = min(max(y0, 0.0), frame_height - side)
    return CropBox(round(x0, 2), round(y0, 2), round(side, 2))


def feather_mask(size: int, feather: float = DEFAULT_FEATHER) -> FloatArray:
    """(size, size) float32 blending weights: 1 inside, a smooth ramp to 0 over the outer
    ``feather`` fraction of each side."""
    ramp_px = max(1.0, feather * size)
    coords = np.arange(size, dtype=np.float32) + 0.5
    edge = np.minimum(coords, size - coords) / ramp_px
    ramp = np.clip(edge, 0.0, 1.0)
    ramp = ramp * ramp * (3 - 2 * ramp)
    return np.outer(ramp, ramp).astype(np.float32)


def paste_back(frame: ImageRGB, rendered: ImageRGB, box: CropBox, mask: FloatArray | None = None) -> ImageRGB:
    """Blend a rendered crop back into its full frame.

    Args:
        frame: (H, W, 3) full frame the crop was taken from.
        rendered: (S, S, 3) crop at the renderer's size.
        box: the avatar's crop box.
        mask: (S, S) float32 weights in [0, 1] (default :func:`feather_mask`).

    Returns:
        A new (H, W, 3) frame.
    """
    size = rendered.shape[0]
    weights = feather_mask(size) if mask is None else mask.astype(np.float32)
    height, width = frame.shape[:2]
    # Only the part of the frame the box covers needs warping.
    x_start, y_start = max(0, int(np.floor(box.x0))), max(0, int(np.floor(box.y0)))
    x_end = min(width, int(np.ceil(box.x0 + box.size)))
    y_end = min(height, int(np.ceil(box.y0 + box.size)))
    if x_end <= x_start or y_end <= y_start:
        return frame.copy()
    inverse = np.asarray(cv2.invertAffineTransform(box.matrix(size)), dtype=np.float64)
    inverse[:, 2] -= (x_start, y_start)
    region = (x_end - x_start, y_end - y_start)
    warped = cv2.warpAffine(
        rendered, inverse, region, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    alpha = cv2.warpAffine(weights, inverse, region, flags=cv2.INTER_LINEAR, borderValue=(0.0,))[..., None]
    out = frame.copy()
    patch = out[y_start:y_end, x_start:x_end].astype(np.float32)
    out[y_start:y_end, x_start:x_end] = np.clip(
        patch + alpha * (warped.astype(np.float32) - patch) + 0.5, 0, 255
    ).astype(np.uint8)
    return out
