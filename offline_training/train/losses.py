"""Losses of the renderer (paper Eq. 5-8): masked L1, perceptual, adversarial.

The perceptual term uses VGG19 features when its weights are found (``--vgg-weights PATH``, or
torchvision's cache ``~/.cache/torch/hub/checkpoints/vgg19-dcbb9e9d.pth``); nothing is
downloaded. Without weights it falls back, with a warning, to 1 - MS-SSIM.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.errors import InputError

logger = logging.getLogger(__name__)

VGG19_CACHE = Path.home() / ".cache" / "torch" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
# torchvision's vgg19 "features": conv widths, "M" = max-pool.
VGG19_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip
# Indices in ``features`` after which activations are compared (relu1_1 .. relu5_1).
VGG_TAPS = (1, 6, 11, 20, 29)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def masked_l1(prediction: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Mean of ``weights`` x |prediction - target| (2 inside the mouth mask, 1 outside)."""
    return (weights * (prediction - target).abs()).mean()


def _vgg19_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG19_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            assert isinstance(item, int)
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=False)]
            channels = item
    return nn.Sequential(*layers)


class VGGPerceptual(nn.Module):
    """L1 between VGG19 activations (relu1_1 .. relu5_1) of prediction and target."""

    def __init__(self, weights: Path) -> None:
        super().__init__()
        self.features = _vgg19_features()
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        try:
            self.features.load_state_dict(features)
        except RuntimeError as exc:
            raise InputError(f"{weights}: not VGG19 weights ({str(exc).splitlines()[0]})") from exc
        self.features.requires_grad_(False).eval()
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        """(N, 3, S, S) images in [-1, 1] → scalar loss."""
        x = ((prediction + 1) / 2 - self.mean) / self.std
        y = ((target + 1) / 2 - self.mean) / self.std
        loss = prediction.new_zeros(())
        for index, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if index in VGG_TAPS:
                loss = loss + F.l1_loss(x, y.detach())
            if index >= VGG_TAPS[-1]:
                break
        return loss


def _gaussian_window(size: int, sigma: float, device: torch.device) -> Tensor:
    coords = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def _ssim_parts(x: Tensor, y: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
    c1, c2 = 0.01**2, 0.03**2
    channels = x.shape[1]
    kernel = window.expand(channels, 1, -1, -1)
    mu_x, mu_y = F.conv2d(x, kernel, groups=channels), F.conv2d(y, kernel, groups=channels)
    sxx = F.conv2d(x * x, kernel, groups=channels) - mu_x**2
    syy = F.conv2d(y * y, kernel, groups=channels) - mu_y**2
    sxy = F.conv2d(x * y, kernel, groups=channels) - mu_x * mu_y
    contrast = (2 * sxy + c2) / (sxx + syy + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (luminance * contrast).mean((1, 2, 3)), contrast.mean((1, 2, 3))


def ssim(x: Tensor, y: Tensor, window_size: int = 11) -> Tensor:
    """Per-image SSIM (N,) of images in [0, 1]."""
    window = _gaussian_window(min(window_size, x.shape[-1]), 1.5, x.device)
    return _ssim_parts(x, y, window)[0]


def ms_ssim(x: Tensor, y: Tensor, window_size: int = 11) -> Tensor:
    """Multi-scale SSIM (Wang et al. 2003) of (N, C, S, S) images in [0, 1], scalar.

    Uses as many of the standard five scales as the image size allows.
    """
    scale_weights = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333], device=x.device)
    scales = 1
    while scales < 5 and min(x.shape[-2:]) // (2**scales) >= window_size:
        scales += 1
    scale_weights = scale_weights[:scales] / scale_weights[:scales].sum()
    window = _gaussian_window(min(window_size, min(x.shape[-2:])), 1.5, x.device)
    values = []
    for scale in range(scales):
        full, contrast = _ssim_parts(x, y, window)
        values.append((full if scale == scales - 1 else contrast).clamp_min(1e-6))
        if scale < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(values, dim=-1)
    return (stacked**scale_weights).prod(-1).mean()


class PerceptualLoss(nn.Module):
    """VGG19 perceptual loss when weights are available, else 1 - MS-SSIM (with a warning)."""

    def __init__(self, vgg_weights: Path | None = None) -> None:
        super().__init__()
        path = vgg_weights or (VGG19_CACHE if VGG19_CACHE.is_file() else None)
        if vgg_weights is not None and not vgg_weights.is_file():
            raise InputError(f"{vgg_weights}: VGG weights not found")
        self.vgg = VGGPerceptual(path) if path is not None else None
        self.kind = "vgg19" if self.vgg is not None else "ms-ssim"
        if self.vgg is None:
            logger.warning(
                "no VGG19 weights (pass --vgg-weights or put torchvision's vgg19-dcbb9e9d.pth in %s): "
                "using 1 - MS-SSIM as the perceptual term",
                VGG19_CACHE.parent,
            )

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        """(N, 3, S, S) images in [-1, 1] → scalar."""
        if self.vgg is not None:
            result: Tensor = self.vgg(prediction, target)
            return result
        return 1 - ms_ssim((prediction + 1) / 2, (target + 1) / 2)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Eq. 6: -log D(I) - log(1 - D(Î))."""
    return F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def generator_adversarial_loss(fake_logits: Tensor) -> Tensor:
    """The generator's term, in the non-saturating form -log D(Î) of Eq. 7's log(1 - D(Î)):
    the same fixed point, with gradients that do not vanish while D wins early in training."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
