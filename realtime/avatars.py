"""The avatars a server was started with, by name: clients choose among them, never by path."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from engines.bundle import DEFAULT_AVATAR_DIR, MANIFEST
from engines.errors import InputError
from realtime.engine import AvatarEngine
from realtime.settings import StreamSettings

logger = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class AvatarSpec:
    """One ``--avatar`` value: ``default``, ``PATH`` or ``NAME=PATH``."""

    name: str | None
    path: Path

    @classmethod
    def parse(cls, text: str) -> AvatarSpec:
        if text == "default":
            if not (DEFAULT_AVATAR_DIR / MANIFEST).is_file():
                raise InputError(
                    f"no default avatar is installed at {DEFAULT_AVATAR_DIR}; rebuild it with "
                    "`stableface build-default`, or pass --avatar PATH to a bundle made by `stableface train`"
                )
            return cls("default", DEFAULT_AVATAR_DIR)
        name, sep, path = text.partition("=")
        if sep and NAME_PATTERN.match(name):
            return cls(name, Path(path))
        return cls(None, Path(text))


class AvatarCatalog:
    """Loaded avatars by name; the first is the default choice.

    Args:
        engines_by_name: name → loaded engine, in the order given on the command line.
    """

    def __init__(self, engines_by_name: dict[str, AvatarEngine]) -> None:
        if not engines_by_name:
            raise InputError("a server needs at least one avatar")
        self.engines = engines_by_name
        self.default = next(iter(engines_by_name))

    @classmethod
    def load(
        cls,
        specs: list[AvatarSpec],
        backend: str = "auto",
        settings: StreamSettings | None = None,
        max_batch: int | None = None,
    ) -> AvatarCatalog:
        """Load every avatar (and its backend, batching up to ``max_batch`` sessions a call) once;
        names must be unique."""
        loaded: dict[str, AvatarEngine] = {}
        try:
            for spec in specs:
                engine = AvatarEngine.load(spec.path, backend, settings, max_batch)
                engine.preload()
                name = spec.name or _safe_name(engine.bundle.manifest.name, spec.path)
                if name in loaded:
                    engine.close()
                    raise InputError(f"two avatars are named {name!r}; name them with --avatar NAME=PATH")
                loaded[name] = engine
                logger.info(
                    "avatar %s: %s, %s backend, latency %.0f ms",
                    name,
                    spec.path,
                    engine.backend.name,
                    engine.latency_ms,
                )
        except BaseException:
            for engine in loaded.values():
                engine.close()
            raise
        return cls(loaded)

    def get(self, name: str | None) -> AvatarEngine:
        """The engine of avatar ``name`` (None: the default).

        Raises:
            InputError: the server was not started with such an avatar.
        """
        key = self.default if name is None else name
        if key not in self.engines:
            raise InputError(f"unknown avatar {name!r}; this server has: {', '.join(self.engines)}")
        return self.engines[key]

    def describe(self) -> list[dict[str, object]]:
        """Name, size and latency of every avatar (for clients)."""
        return [
            {
                "name": name,
                "default": name == self.default,
                "latency_ms": engine.latency_ms,
                "backend": engine.backend.name,
            }
            for name, engine in self.engines.items()
        ]

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()


def _safe_name(name: str, path: Path) -> str:
    for candidate in (name, path.name):
        cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", candidate).strip("-.")[:64]
        if cleaned and NAME_PATTERN.match(cleaned):
            return cleaned
    return "avatar"
