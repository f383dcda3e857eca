"""Loss functions: masked L1 weights, SSIM/MS-SSIM sanity, VGG19 loading without downloads."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engines.errors import InputError
from offline_training.train.discriminator import PatchDiscriminator
from offline_training.train.losses import (
    VGG19_LAYOUT,
    PerceptualLoss,
    discriminator_loss,
    generator_adversarial_loss,
    masked_l1,
    ms_ssim,
    ssim,
)


def test_masked_l1_weighs_the_mouth_twice() -> None:
    prediction, target = torch.zeros(1, 1, 3, 4, 4), torch.ones(1, 1, 3, 4, 4)
    weights = torch.ones(1, 1, 1, 4, 4)
    assert float(masked_l1(prediction, target, weights)) == pytest.approx(1.0)
    weights[..., :2, :] = 2.0
    assert float(masked_l1(prediction, target, weights)) == pytest.approx(1.5)


def test_ssim_and_ms_ssim_are_one_for_identical_images_and_fall_with_noise() -> None:
    torch.manual_seed(0)
    image = torch.rand(2, 3, 128, 128)
    assert float(ssim(image, image).mean()) == pytest.approx(1.0, abs=1e-4)
    assert float(ms_ssim(image, image)) == pytest.approx(1.0, abs=1e-4)
    noisy = (image + 0.2 * torch.randn_like(image)).clamp(0, 1)
    assert float(ms_ssim(image, noisy)) < 0.9
    small = torch.rand(1, 3, 32, 32)
    assert 0 < float(ms_ssim(small, small.flip(-1))) < 1


def test_perceptual_loss_falls_back_to_ms_ssim_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        loss = PerceptualLoss()
    if loss.kind == "vgg19":
        pytest.skip("torchvision's VGG19 weights are in this machine's cache")
    assert loss.kind == "ms-ssim" and "MS-SSIM" in caplog.text
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    assert float(loss(image, image)) == pytest.approx(0.0, abs=1e-4)


def test_perceptual_loss_loads_vgg19_weights_from_a_path(tmp_path: Path) -> None:
    state, index, channels = {}, 0, 3
    for item in VGG19_LAYOUT:
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(int(item), channels, 3, 3) * 0.01
        state[f"features.{index}.bias"] = torch.zeros(int(item))
        channels, index = int(item), index + 2
    path = tmp_path / "vgg19.safetensors"
    save_file(state, str(path))
    loss = PerceptualLoss(path)
    assert loss.kind == "vgg19"
    a, b = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    assert float(loss(a, a)) == pytest.approx(0.0, abs=1e-6) and float(loss(a, b)) > 0
    with pytest.raises(InputError, match="not found"):
        PerceptualLoss(tmp_path / "missing.pth")
    save_file({"features.0.weight": torch.zeros(1)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(InputError, match="not VGG19"):
        PerceptualLoss(tmp_path / "wrong.safetensors")


def test_patch_discriminator_and_adversarial_losses() -> None:
    discriminator = PatchDiscriminator(16, 3)
    logits = discriminator(torch.rand(2, 3, 128, 128))
    assert logits.shape[:2] == (2, 1) and logits.shape[-1] > 1  # one score per patch
    confident_real, confident_fake = torch.full((2, 1, 4, 4), 10.0), torch.full((2, 1, 4, 4), -10.0)
    assert float(discriminator_loss(confident_real, confident_fake)) < 1e-3
    assert float(generator_adversarial_loss(confident_fake)) > 5
