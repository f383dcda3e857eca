"""The renderer's inputs and outputs, defined once for training, offline rendering and streaming.

The renderer sees, per frame, an *eroded reference* (the reference crop with its mouth region set
to mid grey, in [-1, 1]) and a *face shape* (the posed face mesh rasterised into the crop, in
[0, 1]); it returns the crop in [-1, 1], which is turned back into pixels and pasted into the full
reference frame under a feathered mouth mask, with the "AI-generated" mark on top. Every path that
builds those inputs or consumes that output calls these functions (streaming through their
batched tensor forms in :mod:`engines.device_frames`, tested equal), so a training sample of
frame k and the streaming input of frame k are the same arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from engines.ai_mark import apply_ai_mark
from engines.geometry.crop import CropBox, paste_back
from engines.geometry.face_model import FaceModel
from engines.geometry.layouts import anchors_for
from engines.geometry.masks import mouth_mask, paste_mask
from engines.geometry.pose import HeadPose

if TYPE_CHECKING:
    import torch

    from engines.geometry.raster_torch import FaceShapeRasterizer

FloatArray = npt.NDArray[np.float32]
ImageRGB = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.uint8]

ERODED_GREY = 127


def fit_crop(crop: ImageRGB, size: int) -> ImageRGB:
    """(S', S', 3) uint8 crop resized to the renderer's side S (area-averaged when shrinking)."""
    if crop.shape[0] == size:
        return crop
    interpolation = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(crop, (size, size), interpolation=interpolation), dtype=np.uint8)


def to_signed(images: ImageRGB) -> FloatArray:
    """(..., S, S, 3) uint8 RGB → (..., 3, S, S) float32 in [-1, 1], the networks' pixel range."""
    channels_first = np.moveaxis(images, -1, -3)
    return np.ascontiguousarray(channels_first.astype(np.float32) / 127.5 - 1.0)


def to_image(signed: FloatArray) -> ImageRGB:
    """(..., 3, S, S) float in [-1, 1] → (..., S, S, 3) uint8 RGB (clipped, truncated)."""
    channels_last = np.moveaxis(np.asarray(signed, dtype=np.float32), -3, -1)
    return np.asarray(np.clip((channels_last + 1.0) * 127.5, 0, 255), dtype=np.uint8)


def erode(crop: ImageRGB, mask: Mask) -> ImageRGB:
    """Copy of an (S, S, 3) crop with the (S, S) mask's region set to mid grey."""
    out = crop.copy()
    out[mask > 0] = ERODED_GREY
    return out


def eroded_input(crop: ImageRGB, mask: Mask) -> FloatArray:
    """(3, S, S) float32 eroded reference in [-1, 1] from an (S, S, 3) crop and its (S, S) mask."""
    return to_signed(erode(crop, mask))


def crop_mouth_mask(landmarks: FloatArray, box: CropBox, face_model: FaceModel, size: int) -> Mask:
    """(S, S) uint8 erosion mask (255 inside) of a frame from its (N, 3) full-frame landmarks."""
    return mouth_mask(box.to_crop_points(landmarks, size), face_model.mouth_region, size)


def crop_points(
    face_model: FaceModel,
    box: CropBox,
    size: int,
    pose: HeadPose,
    mouth_params: FloatArray,
    upper_params: FloatArray,
) -> FloatArray:
    """(T, N, 3) posed face-model points of T frames in crop pixels at side ``size`` (z scaled alike).

    Args:
        face_model: the avatar's face model.
        box: the avatar's crop box.
        size: renderer side S.
        pose: the T frames' head poses.
        mouth_params: (T, Em) raw mouth parameters (face-model units).
        upper_params: (T, Eu) upper-face parameters.
    """
    posed = pose.apply(face_model.shapes(mouth_params, upper_params))
    return box.to_crop_points(posed, size)


def rasterizer(face_model: FaceModel, size: int, device: torch.device | str = "cpu") -> FaceShapeRasterizer:
    """The face-shape rasteriser of an avatar's mesh at side ``size``."""
    # torch is imported on first use, so commands that fail on their input answer in a blink.
    from engines.geometry.raster_torch import FaceShapeRasterizer

    ring = tuple(anchors_for(face_model.layout).inner_lip_ring)
    return FaceShapeRasterizer(face_model.triangles, face_model.vertex_code, ring, size, device)


def face_shapes(
    face_model: FaceModel,
    box: CropBox,
    size: int,
    pose: HeadPose,
    mouth_params: FloatArray,
    upper_params: FloatArray,
) -> FloatArray:
    """Rasterised face shapes of T frames (arguments as :func:`crop_points`).

    Returns:
        (T, 4, S, S) float32 in [0, 1]: canonical code xyz and the inner-mouth mask.
    """
    import torch

    from engines.torch_threads import one_cpu_thread

    points = crop_points(face_model, box, size, pose, mouth_params, upper_params)
    with one_cpu_thread(torch.device("cpu")):
        shapes: FloatArray = rasterizer(face_model, size)(torch.from_numpy(points)).numpy()
    return shapes


def paste_weights(mask: Mask) -> FloatArray:
    """(S, S) float32 blend weights of the paste-back from the frame's (S, S) erosion mask."""
    return paste_mask(mask)


def paste_rendered(
    full_frame: ImageRGB, rendered: FloatArray, box: CropBox, weights: FloatArray, ai_mark: bool = False
) -> ImageRGB:
    """Paste a rendered crop into its full reference frame.

    Args:
        full_frame: (H, W, 3) uint8 reference frame (not modified).
        rendered: (3, S, S) renderer output in [-1, 1].
        box: the avatar's crop box.
        weights: (S, S) blend weights from :func:`paste_weights`.
        ai_mark: draw the "AI-generated" mark on the result.

    Returns:
        A new (H, W, 3) uint8 frame.
    """
    image = paste_back(full_frame, to_image(rendered), box, weights)
    return apply_ai_mark(image) if ai_mark else image
