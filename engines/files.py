"""Small file helpers shared by the dataset builder and the avatar bundle."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path


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
