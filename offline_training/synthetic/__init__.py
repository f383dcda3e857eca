"""Synthetic talking faces from free data (scikit-image's public-domain astronaut portrait)."""

from offline_training.synthetic.generator import SyntheticClip, generate_talking_face, write_talking_face

__all__ = ["SyntheticClip", "generate_talking_face", "write_talking_face"]
