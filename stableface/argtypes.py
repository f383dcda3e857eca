"""Argument types shared by the command-line modules."""

from __future__ import annotations

import argparse

# The model presets of engines.nets.PRESETS, named here so building the parser imports no torch.
PRESET_NAMES = ("paper", "small", "mini", "tiny")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
