"""Shapes, causality and switches of the networks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engines.bundle import DEFAULT_AVATAR_DIR, MANIFEST, read_manifest
from engines.errors import InputError
from engines.nets import PRESETS, AdaptiveSmoothing, AudioToExpression, Renderer
from engines.nets.attention import block_causal_mask, lookahead_mask
from engines.nets.config import RendererConfig

TINY = PRESETS["tiny"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_masks() -> None:
    mask = lookahead_mask(5, 2)
    assert mask[0].tolist() == [True, True, True, False, False]
    assert mask[4].all()
    block = block_causal_mask(6, 2)
    # chunks counted from the end: frames (0,1) (2,3) (4,5)
    assert block[2].tolist() == [True, True, True, True, False, False]
    assert block[5].all()
    assert block_causal_mask(3, 1, tokens_per_frame=4).shape == (12, 12)


def test_audio_to_expression_shapes_and_lookahead() -> None:
    model = AudioToExpression(TINY.audio).eval()
    audio = torch.randn(2, 16, 320)
    out = model(audio)
    assert out.shape == (2, 16, TINY.audio.mouth_dims)
    changed = audio.clone()
    changed[:, 10:] += 5.0
    out2 = model(changed)
    lookahead = TINY.audio.lookahead_frames
    torch.testing.assert_close(out2[:, : 10 - lookahead], out[:, : 10 - lookahead])
    assert not torch.allclose(out2[:, 10 - lookahead], out[:, 10 - lookahead])


@pytest.mark.parametrize("causal", [False, True])
def test_smoothing_weights_sum_to_one_and_shapes_keep_their_size(causal: bool) -> None:
    smoothing = AdaptiveSmoothing(TINY.smoothing, 32, TINY.audio.lookahead_frames).eval()
    params = torch.randn(2, 12, 32)
    weights = smoothing.weights(params, causal)
    assert weights.shape == (2, 12, TINY.smoothing.width)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 12))
    assert (weights >= 0).all()
    shapes = torch.rand(2, 12, 4, 16, 16)
    assert smoothing(shapes, params, causal).shape == shapes.shape


def test_causal_smoothing_never_looks_past_the_lookahead() -> None:
    smoothing = AdaptiveSmoothing(TINY.smoothing, 32, TINY.audio.lookahead_frames).eval()
    lookahead = TINY.audio.lookahead_frames
    params, shapes = torch.randn(1, 16, 32), torch.rand(1, 16, 4, 8, 8)
    base = smoothing(shapes, params, causal=True)
    params2, shapes2 = params.clone(), shapes.clone()
    params2[:, 9:] += 3.0
    shapes2[:, 9:] = torch.rand(1, 7, 4, 8, 8)
    moved = smoothing(shapes2, params2, causal=True)
    torch.testing.assert_close(moved[:, : 9 - lookahead], base[:, : 9 - lookahead])
    assert not torch.allclose(moved[:, 9 - lookahead], base[:, 9 - lookahead])
    # the centred form does look ahead (K-1)/2 frames
    centred = smoothing(shapes2, params2) - smoothing(shapes, params)
    assert centred[:, 9 - (TINY.smoothing.width - 1) // 2 - 1 :].abs().sum() > 0


def test_smoothing_starts_near_identity_when_asked() -> None:
    smoothing = AdaptiveSmoothing(TINY.smoothing, 32, TINY.audio.lookahead_frames).eval()
    smoothing.set_form_preference(causal=False)
    weights = smoothing.weights(torch.randn(1, 8, 32))
    assert (weights[..., TINY.smoothing.width // 2] > 0.8).all()


def test_renderer_shapes_and_output_range() -> None:
    renderer = Renderer(TINY.renderer).eval()
    size = TINY.renderer.image_size
    out = renderer(
        torch.rand(2, 4, 3, size, size) * 2 - 1, torch.rand(2, 4, 4, size, size), torch.randn(2, 4, 320)
    )
    assert out.shape == (2, 4, 3, size, size)
    assert out.abs().max() <= 1.0


@torch.no_grad()
def test_output_sharpening_sharpens_rendered_frames_but_never_training() -> None:
    config = TINY.renderer.model_copy(update={"output_sharpening": 1.0})
    sharp, plain = Renderer(config), Renderer(TINY.renderer)
    plain.load_state_dict(sharp.state_dict())  # the filter is not a weight: bundles load either way
    features = torch.randn(2, plain.feature_channels, plain.feature_size, plain.feature_size)
    sharp.train(), plain.train()
    assert torch.equal(sharp.decode(features), plain.decode(features))  # training sees no filter
    sharp.eval(), plain.eval()
    drawn, smooth = sharp.decode(features), plain.decode(features)
    assert drawn.abs().max() <= 1.0
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert abs(float(drawn[inner].mean() - smooth[inner].mean())) < 0.02  # no brightness shift
    edges = (smooth.diff(dim=-1).abs().mean(), drawn.diff(dim=-1).abs().mean())
    assert edges[1] > 1.3 * edges[0]  # steeper steps between neighbouring pixels
    assert sharp.sharpen is not None
    flat = torch.full((1, 3, 16, 16), 0.25)
    padded = torch.nn.functional.pad(flat, (2, 2, 2, 2), mode="replicate")
    assert torch.allclose(torch.nn.functional.conv2d(padded, sharp.sharpen, groups=3), flat)


def test_block_causal_renderer_keeps_earlier_chunks_fixed() -> None:
    renderer = Renderer(TINY.renderer).eval()
    # The dependency module starts as an identity (zero-initialised output): make it matter.
    assert renderer.dependency is not None
    for parameter in renderer.dependency.unembed.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    size, frames, chunk = TINY.renderer.image_size, 6, 2
    eroded, shapes, audio = (
        torch.rand(1, frames, 3, size, size),
        torch.rand(1, frames, 4, size, size),
        torch.randn(1, frames, 320),
    )
    mask = block_causal_mask(frames, chunk, renderer.tokens_per_frame)
    base = renderer(eroded, shapes, audio, mask)
    eroded2 = eroded.clone()
    eroded2[:, 4:] = torch.rand(1, 2, 3, size, size)
    moved = renderer(eroded2, shapes, audio, mask)
    torch.testing.assert_close(moved[:, :4], base[:, :4])
    full = renderer(eroded2, shapes, audio) - renderer(eroded, shapes, audio)
    assert full[:, :4].abs().max() > 1e-6  # without the mask the future leaks back


@pytest.mark.parametrize(
    "switches",
    [
        {"use_audio_fusion": False},
        {"use_dependency": False},
        {"use_audio_fusion": False, "use_dependency": False},
    ],
)
def test_every_ablation_switch_builds_and_runs(switches: dict[str, bool]) -> None:
    config = RendererConfig(**{**TINY.renderer.model_dump(), **switches})
    renderer = Renderer(config)
    size = config.image_size
    out = renderer(torch.rand(1, 3, 3, size, size), torch.rand(1, 3, 4, size, size), torch.randn(1, 3, 320))
    assert out.shape == (1, 3, 3, size, size)
    assert (renderer.fusion is None) == (not config.use_audio_fusion)
    assert (renderer.dependency is None) == (not config.use_dependency)


@pytest.mark.parametrize("preset", ["small", "paper"])
def test_presets_build_with_the_documented_sizes(preset: str) -> None:
    config = PRESETS[preset].renderer
    renderer = Renderer(config)
    assert renderer.dependency is not None
    channels = 4 * config.base_channels
    patch = config.image_size // 4 // config.patch_grid
    assert renderer.dependency.embed.in_features == channels * patch * patch
    if preset == "paper":
        assert (config.image_size, channels, config.patch_grid, config.token_dim) == (256, 256, 4, 512)
        assert renderer.dependency.embed.in_features == 16 * 16 * 256


def test_bundle_manifest_may_repeat_the_lookahead_only_when_it_agrees(tmp_path: Path) -> None:
    manifest = json.loads((DEFAULT_AVATAR_DIR / MANIFEST).read_text())
    lookahead = manifest["model"]["audio"]["lookahead_frames"]
    manifest["model"]["smoothing"]["lookahead_frames"] = lookahead
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    assert read_manifest(tmp_path).model.audio.lookahead_frames == lookahead
    manifest["model"]["smoothing"]["lookahead_frames"] = lookahead + 1
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="lookahead_frames"):
        read_manifest(tmp_path)
