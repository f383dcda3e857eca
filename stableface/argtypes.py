"""Argument types and settings helpers shared by the command-line modules."""

from __future__ import annotations

import argparse
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from engines.errors import InputError

SettingsT = TypeVar("SettingsT", bound=BaseModel)

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


def default_of(model: type[BaseModel], field: str) -> Any:
    """The default of a settings field, so that an option's default is written once, in the model."""
    return model.model_fields[field].get_default(call_default_factory=True)


def validated(model: type[SettingsT], **values: object) -> SettingsT:
    """Build a pydantic settings object, turning a validation failure into a one-line error.

    Raises:
        InputError: a value the model refuses, named by its field.
    """
    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InputError(f"invalid {where}: {message}" if where else message) from exc
