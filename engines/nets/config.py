"""Sizes of the networks. Every size is configuration; the presets cover the uses.

- ``paper``: the paper's renderer at 256x256 (8 residual blocks, features 64x64x256, p = 4,
  d = 512, N = 4); GPU.
- ``small``: 128x128, real time on a 2-core CPU through ONNX Runtime.
- ``live``: 128x128, the bundled default avatar (``stableface build-default``): twice
  ``mini``'s widths, one frame of audio look-ahead and adaptive smoothing over three frames (t-1,
  t, t+1: the causal and the centred forms then mix the same frames, so training one trains the
  other), chunk 1. No audio fusion: trained on the generated clip's one toy voice it made the
  mouth flicker under real voices (docs/default-avatar.md, "Design"). Output sharpening 1.3: its
  128 px render is pasted into a larger box, which the upscaling blurs.
- ``mini``: 128x128 with narrow layers, the previous default avatar: chunk 1, no audio look-ahead
  and so no adaptive smoothing (causal smoothing without look-ahead can only average past frames,
  which delays the lips), so that a 2-core CPU shows the lips within 250 ms of the sound.
- ``tiny``: 64x64, seconds per training step on a CPU; for tests.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AttentionMode = Literal["full", "block_causal"]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioToExpressionConfig(_Config):
    """Transformer-S2A-like audio-to-mouth-parameters model.

    Attributes:
        n_mels: audio feature bands.
        features_per_frame: audio feature rows per video frame (4 at 25 fps, 10 ms hop).
        d_model, layers, heads: transformer size.
        lookahead_frames: L, how many future video frames a frame may attend to (80 ms at L = 2);
            the one look-ahead of the avatar: the causal smoothing and the live stream use it too.
        mouth_dims: Em, output parameters.
        dropout: dropout probability in training.
    """

    n_mels: int = 80
    features_per_frame: int = 4
    d_model: int = 128
    layers: int = 3
    heads: int = 4
    lookahead_frames: int = Field(2, ge=0)
    mouth_dims: int = 32
    dropout: float = 0.1


class SmoothingConfig(_Config):
    """Adaptive smoothing (Table I): 4 x Conv1D-BN-ReLU (32, 32, 16, 16), Conv1D-Sigmoid to K.

    Attributes:
        width: K, frames mixed per output frame (odd).
        channels: hidden widths of the four Conv1D-BN-ReLU layers.
        kernel_size: temporal kernel of every layer.

    The causal form looks ahead as far as the audio model (``AudioToExpressionConfig.lookahead_frames``).
    """

    width: int = Field(5, ge=1)
    channels: tuple[int, int, int, int] = (32, 32, 16, 16)
    kernel_size: int = 3


class RendererConfig(_Config):
    """The StableFace renderer.

    Attributes:
        image_size: side of the crop it renders.
        in_channels: eroded reference (3) + face shape (4).
        base_channels: width of the first conv; features have 4x this after two stride-2 convs.
        residual_blocks: residual blocks after the encoder.
        audio_dim: per-frame audio input (features_per_frame x n_mels), for the fusion module.
        patch_grid: p, each frame's feature map is cut into p x p patches.
        token_dim: d, width of the transformer tokens.
        transformer_blocks: N.
        heads: attention heads.
        mlp_ratio: transformer feed-forward width over d.
        use_audio_fusion, use_dependency: ablation switches (Table V).
        output_sharpening: amount of the unsharp mask (Gaussian σ = 0.7 px at the render size) on
            every frame the renderer draws outside training, 0 = none. A crop rendered at 128 px
            and pasted into a larger face box is blurred by the upscaling: a perfect 128 px crop
            of the default avatar's own frames keeps 0.60x their mouth-box CPBD, and 1.3 restores
            1.0x (docs/default-avatar.md). Training never sees it, so the network does not learn
            to undo it.
    """

    image_size: int = 256
    in_channels: int = 7
    base_channels: int = 64
    residual_blocks: int = 4
    audio_dim: int = 320
    patch_grid: int = 4
    token_dim: int = 512
    transformer_blocks: int = 4
    heads: int = 8
    mlp_ratio: float = 2.0
    use_audio_fusion: bool = True
    use_dependency: bool = True
    output_sharpening: float = Field(0.0, ge=0.0, le=4.0)


class StreamingConfig(_Config):
    """How the networks run on a live stream; the backends' fixed shapes.

    Attributes:
        chunk_frames: C, new frames rendered per call; 2 keeps the `small` avatar's output delay
            at 240 ms on a 2-core CPU (each frame of C adds 40 ms; see realtime.settings).
        past_frames: P, earlier frames the renderer's dependency module attends to; default
            ``sequence_length - C`` (the window the renderer was trained on).
        audio_window_frames: frames of audio features the audio-to-expression model sees per call
            (it was trained on windows of this length).
        smoothing_window_frames: frames of mouth parameters the causal smoothing sees per call;
            at least its receptive field (5 convolutions of kernel k: 5·(k-1) + 1) plus C and L.
        max_batch: sessions whose chunks one call may batch.
        compute_allowance_ms: time a live stream grants a chunk's computation once its audio is
            in (part of the output delay; frames not ready by then are skipped). Sized for the
            networks on their target machine; a session may override it.
    """

    chunk_frames: int = Field(2, ge=1)
    past_frames: int | None = Field(None, ge=0)
    audio_window_frames: int = Field(50, ge=1)
    smoothing_window_frames: int = Field(20, ge=1)
    max_batch: int = Field(1, ge=1)
    compute_allowance_ms: float = Field(70.0, ge=0)


class ModelConfig(_Config):
    """Everything that shapes an avatar's networks and how they are run."""

    preset: str
    audio: AudioToExpressionConfig = AudioToExpressionConfig()
    smoothing: SmoothingConfig = SmoothingConfig()
    renderer: RendererConfig = RendererConfig()
    sequence_length: int = Field(12, ge=1)
    use_smoothing: bool = True
    use_erosion_augmentation: bool = True
    streaming: StreamingConfig = StreamingConfig()

    def with_mouth_dims(self, mouth_dims: int) -> ModelConfig:
        """The same config for a face model with ``mouth_dims`` mouth parameters."""
        return self.model_copy(update={"audio": self.audio.model_copy(update={"mouth_dims": mouth_dims})})


PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(
        preset="paper",
        audio=AudioToExpressionConfig(d_model=256, layers=4, heads=4),
        renderer=RendererConfig(
            image_size=256,
            base_channels=64,
            residual_blocks=8,
            patch_grid=4,
            token_dim=512,
            transformer_blocks=4,
        ),
    ),
    "small": ModelConfig(
        preset="small",
        audio=AudioToExpressionConfig(d_model=128, layers=3, heads=4),
        renderer=RendererConfig(
            image_size=128,
            base_channels=32,
            residual_blocks=2,
            patch_grid=4,
            token_dim=256,
            transformer_blocks=2,
            heads=4,
        ),
    ),
    "mini": ModelConfig(
        preset="mini",
        audio=AudioToExpressionConfig(d_model=96, layers=3, heads=4, lookahead_frames=0),
        renderer=RendererConfig(
            image_size=128,
            base_channels=8,
            residual_blocks=1,
            patch_grid=4,
            token_dim=48,
            transformer_blocks=1,
            heads=2,
            use_audio_fusion=False,
        ),
        sequence_length=6,
        use_smoothing=False,
        streaming=StreamingConfig(chunk_frames=1, compute_allowance_ms=30.0),
    ),
    "live": ModelConfig(
        preset="live",
        audio=AudioToExpressionConfig(d_model=96, layers=3, heads=4, lookahead_frames=1),
        smoothing=SmoothingConfig(width=3),
        renderer=RendererConfig(
            image_size=128,
            base_channels=16,
            residual_blocks=2,
            patch_grid=4,
            token_dim=64,
            transformer_blocks=1,
            heads=2,
            use_audio_fusion=False,
            output_sharpening=1.3,
        ),
        sequence_length=6,
        streaming=StreamingConfig(chunk_frames=1, compute_allowance_ms=30.0),
    ),
    "tiny": ModelConfig(
        preset="tiny",
        audio=AudioToExpressionConfig(d_model=32, layers=1, heads=2, dropout=0.0),
        renderer=RendererConfig(
            image_size=64,
            base_channels=8,
            residual_blocks=1,
            patch_grid=4,
            token_dim=32,
            transformer_blocks=1,
            heads=2,
        ),
        sequence_length=6,
    ),
}
