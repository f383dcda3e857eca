"""The per-frame work around the renderer for a batch of frames at once, on the backend's device.

Streaming renders many sessions' chunks in one batch; their face shapes, eroded references and
paste-backs are computed here as tensor operations over the whole batch (CPU or CUDA), with the
same results as the per-frame definitions of :mod:`engines.render_io` that training and offline
rendering use (the face-shape coverage exactly, pixels within one grey level; tests). The mesh is
posed in numpy for the batch (a few small products), everything per pixel runs in torch.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from engines.bundle import AvatarBundle
from engines.frame_tensors import FrameTensors
from engines.geometry.layouts import anchors_for
from engines.geometry.raster_torch import FaceShapeRasterizer

FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int64]


class DeviceFrames:
    """One avatar's batched per-frame work on one device.

    Args:
        bundle: the avatar.
        device: where the tensors live (the backend's device).
    """

    def __init__(self, bundle: AvatarBundle, device: torch.device | str = "cpu") -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.size = bundle.config.renderer.image_size
        model = bundle.face_model
        self.rasterizer = FaceShapeRasterizer(
            model.triangles,
            model.vertex_code,
            tuple(anchors_for(model.layout).inner_lip_ring),
            self.size,
            self.device,
        )
        self.images = FrameTensors(bundle, self.device)
        if self.device.type == "cuda":  # filled caches never copy indices back to the host
            self.images.preload()

    def crop_points(self, reference_indices: IndexArray, mouth_params: FloatArray) -> FloatArray:
        """(N, P, 3) posed mesh points in crop pixels of N frames: each reference frame's pose and
        upper face with the given raw mouth parameters (N, Em)."""
        reference = self.bundle.reference
        model = self.bundle.face_model
        posed = reference.pose.select(reference_indices).apply(
            model.shapes(mouth_params, reference.upper_params[reference_indices])
        )
        return self.bundle.crop_box.to_crop_points(posed, self.size)

    def face_shapes(self, reference_indices: IndexArray, mouth_params: FloatArray) -> torch.Tensor:
        """(N, 4, S, S) float32 face shapes in [0, 1] on the device (see ``render_io.face_shapes``).

        Args:
            reference_indices: (N,) reference frame of each face shape.
            mouth_params: (N, Em) raw mouth parameters (face-model units).
        """
        if len(reference_indices) == 0:
            return torch.zeros((0, 4, self.size, self.size), device=self.device)
        points = self.crop_points(reference_indices, mouth_params)
        return self.rasterizer(torch.from_numpy(points).to(self.device))

    def eroded(self, reference_indices: IndexArray) -> torch.Tensor:
        """(N, 3, S, S) float32 eroded reference crops in [-1, 1] on the device."""
        return self.images.eroded(torch.as_tensor(reference_indices, device=self.device))

    def paste(self, reference_indices: IndexArray, rendered: torch.Tensor, ai_mark: bool) -> torch.Tensor:
        """(N, H, W, 3) uint8 full frames on the device: rendered crops (N, 3, S, S) in [-1, 1]
        pasted into their reference frames, with the "AI-generated" mark when ``ai_mark``."""
        indices = torch.as_tensor(reference_indices, device=self.device)
        return self.images.paste(indices, rendered.to(self.device, torch.float32), ai_mark)
