"""Argument types and settings helpers shared by the command-line modules."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from engines.bundle_paths import DEFAULT_AVATAR_DIR, DEFAULT_AVATAR_NAME, default_avatar_installed
from engines.errors import InputError

SettingsT = TypeVar("SettingsT", bound=BaseModel)

# The model presets of engines.nets.PRESETS, named here so building the parser imports no torch.
PRESET_NAMES = ("paper", "small", "live", "mini", "tiny")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def avatar_folder(text: str) -> Path:
    """An avatar argument: ``default`` (the bundled avatar, as ``serve`` and ``live`` take it) or a
    bundle folder (checked when it is loaded)."""
    if text != DEFAULT_AVATAR_NAME:
        return Path(text)
    if not default_avatar_installed():
        raise argparse.ArgumentTypeError(
            f"no default avatar is installed at {DEFAULT_AVATAR_DIR}; "
            "rebuild it with `stableface build-default`"
        )
    return DEFAULT_AVATAR_DIR


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def duration(text: str) -> float:
    """Seconds of a duration such as ``90s``, ``20m``, ``1h30m`` (a bare number: minutes)."""
    from offline_training.train.budget import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def default_of(model: type[BaseModel], field: str) -> Any:
    """The default of a settings field, so that an option's default is written once, in the model."""
    return model.model_fields[field].get_default(call_default_factory=True)


def validated(model: type[SettingsT], flags: Mapping[str, str] | None = None, **values: object) -> SettingsT:
    """Build a pydantic settings object, turning a validation failure into a one-line error.

    ``flags`` names the command-line option of a field where it is not ``--field-name`` (the error
    names what the user typed).

    Raises:
        InputError: a value the model refuses, named by its option.
    """
    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        where = (flags or {}).get(field, "--" + field.replace("_", "-")) if field else ""
        where += "".join(f".{part}" for part in first["loc"][1:] if isinstance(part, str))
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InputError(f"invalid {where}: {message}" if where else message) from exc
