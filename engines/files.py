"""Small file helpers shared by the dataset builder, the avatar bundle and the reports."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engines.errors import OutputError


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sort_safetensors_metadata(path: Path) -> None:
    """Rewrite a safetensors file's header with its metadata keys in sorted order, in place.

    The safetensors writer keeps metadata in a hash map and so orders the keys differently from
    one save to the next; sorted, equal content gives equal bytes (reproducible builds). The
    header keeps its length (same keys and values, padded with spaces as the format allows).
    """
    with path.open("r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        metadata = header.pop("__metadata__", None)
        ordered = ({"__metadata__": dict(sorted(metadata.items()))} if metadata else {}) | header
        text = json.dumps(ordered, separators=(",", ":")).encode()
        if len(text) <= length:
            handle.seek(8)
            handle.write(text + b" " * (length - len(text)))


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a hidden partial path beside ``path`` to write to; on success it replaces ``path``.

    A failure leaves ``path`` as it was and no partial file behind; an OS error becomes an
    :class:`~engines.errors.OutputError` naming ``path``. The partial keeps ``path``'s suffix, for
    writers that choose the format by it.
    """
    partial = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield partial
        partial.replace(path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
