"""The networks of the paper (section III), as plain ``torch.nn`` modules configured by presets."""

from engines.nets.audio2expression import AudioToExpression
from engines.nets.config import (
    PRESETS,
    AudioToExpressionConfig,
    ModelConfig,
    RendererConfig,
    SmoothingConfig,
    StreamingConfig,
)
from engines.nets.renderer import Renderer
from engines.nets.smoothing import AdaptiveSmoothing

__all__ = [
    "PRESETS",
    "AdaptiveSmoothing",
    "AudioToExpression",
    "AudioToExpressionConfig",
    "ModelConfig",
    "Renderer",
    "RendererConfig",
    "SmoothingConfig",
    "StreamingConfig",
]
