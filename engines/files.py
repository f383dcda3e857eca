"""Small file helpers: checksums, reproducible safetensors headers, and the one way to write an
output so that it appears only when complete (a hidden partial beside it, then a rename)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
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


def partial_path(path: Path) -> Path:
    """The hidden name beside ``path`` that a writer fills before it takes ``path``'s place:
    ``.STEM.partial-PID.SUFFIX`` (the suffix kept, for writers that choose the format by it)."""
    return _hidden(path, "partial")


def _hidden(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.stem}.{tag}-{os.getpid()}{path.suffix}")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a hidden partial path beside ``path`` to write to; on success it replaces ``path``.

    A failure leaves ``path`` as it was and no partial file behind; an OS error becomes an
    :class:`~engines.errors.OutputError` naming ``path``. The partial keeps ``path``'s suffix, for
    writers that choose the format by it.
    """
    partial = partial_path(path)
    try:
        yield partial
        partial.replace(path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {_reason(exc)}") from exc
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def staging_directory(path: Path) -> Iterator[Path]:
    """Yield a new empty hidden folder beside ``path`` (:func:`partial_path`), removed on exit
    whatever happens; what the caller moved out of it before then stays.

    Raises:
        OutputError: the folder cannot be made (``path``'s parent is made if missing), or an OS
            error while it is in use.
    """
    staging = partial_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"{path}: cannot write there ({_reason(exc)})") from exc
    try:
        yield staging
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {_reason(exc)}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_directory(path: Path, replace: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path`` to fill; on success it becomes ``path``.

    With ``replace``, an existing ``path`` is moved aside only once the new folder is complete
    and deleted after the new one is in; without, an existing ``path`` is an error. A failure
    leaves ``path`` as it was and no staging folder behind.

    Raises:
        OutputError: ``path`` exists (without ``replace``), or an OS error (one line naming ``path``).
    """
    with staging_directory(path) as staging:
        yield staging
        if not (path.exists() or path.is_symlink()):
            staging.rename(path)
            return
        if not replace:
            raise OutputError(f"{path}: already exists")
        retired = _hidden(path, "old")
        path.rename(retired)
        try:
            staging.rename(path)
        except OSError:
            retired.rename(path)
            raise
        with contextlib.suppress(OSError):
            remove_path(retired)


def remove_path(path: Path) -> None:
    """Delete a file, link or folder tree; nothing there is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock named after ``path`` (a hidden ``.lock`` file beside it) for the
    block: processes that make the same file or folder take turns, the later ones then find it
    made. An advisory ``flock``, released when the block ends or the process dies.

    Raises:
        OutputError: the lock file cannot be made (a read-only folder).
    """
    lock_path = path.with_name(f".{path.name}.lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+b")  # noqa: SIM115 - held open for the whole block
    except OSError as exc:
        raise OutputError(f"{path}: cannot lock: {_reason(exc)}") from exc
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
