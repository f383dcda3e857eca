"""Giving freed memory back to the operating system after a session ends."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Return free heap pages to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    A session frees tens of megabytes of frames in pieces too small for glibc to unmap on its own,
    so without this a server's resident memory would stay at its peak after sessions end.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
