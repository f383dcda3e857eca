"""Where avatar bundles are found, without loading anything (the command line needs these before
any model library is imported)."""

from __future__ import annotations

from pathlib import Path

MANIFEST = "avatar.json"
DEFAULT_AVATAR_DIR = Path(__file__).resolve().parent / "default_avatar"  # `stableface build-default`
DEFAULT_AVATAR_NAME = "default"


def default_avatar_installed() -> bool:
    """Whether the bundled default avatar is there (a checkout may have removed or not built it)."""
    return (DEFAULT_AVATAR_DIR / MANIFEST).is_file()
