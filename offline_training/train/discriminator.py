"""PatchGAN discriminator (as in Neural Voice Puppetry / pix2pix): one realness score per patch."""

from __future__ import annotations

from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    """conv 4x4 s2 (no norm) → (layers - 1) x [conv 4x4 s2, instance norm] → conv 4x4 s1 → 1 channel.

    Args:
        base_channels: width of the first layer (64 in pix2pix), doubled per layer up to 8x.
        layers: downsampling layers (3 gives the 70x70 receptive field of pix2pix).
    """

    def __init__(self, base_channels: int = 64, layers: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = base_channels
        for index in range(1, layers + 1):
            previous, width = width, base_channels * min(2**index, 8)
            stride = 2 if index < layers else 1
            blocks += [
                nn.Conv2d(previous, width, 4, stride, 1),
                nn.InstanceNorm2d(width, affine=True),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        blocks.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, S, S) images in [-1, 1] → (N, 1, s, s) logits."""
        result: Tensor = self.net(images)
        return result
