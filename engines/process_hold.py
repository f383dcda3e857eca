"""A process-wide setting held while anyone needs it, and restored when the last one lets go.

Some settings belong to the whole process (numpy's BLAS thread count, where file descriptor 2
points). A part that needs one changes it on the first ``acquire`` and undoes it on the last
``release``, counted across threads, so overlapping users never restore each other's change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

Saved = TypeVar("Saved")


class CountedHold(Generic[Saved]):
    """``apply()`` on the first acquire (its result is kept), ``restore(result)`` on the last release.

    Args:
        apply: changes the setting and returns what ``restore`` needs to undo it.
        restore: undoes the change.
    """

    def __init__(self, apply: Callable[[], Saved], restore: Callable[[Saved], None]) -> None:
        self._apply, self._restore = apply, restore
        self._lock = threading.Lock()
        self._holders = 0
        self._saved: Saved | None = None

    def acquire(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._saved = self._apply()
            self._holders += 1

    def release(self) -> None:
        """Let go of one hold; the last one restores the setting. Extra releases are ignored."""
        with self._lock:
            if self._holders == 0:
                return
            self._holders -= 1
            if self._holders == 0:
                saved, self._saved = self._saved, None
                self._restore(saved)  # type: ignore[arg-type]
