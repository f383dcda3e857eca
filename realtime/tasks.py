"""Stopping background tasks without hiding how they ended."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger(__name__)


async def stop_task(task: asyncio.Task[Any], what: str, failure_raised_elsewhere: bool = False) -> None:
    """Cancel ``task`` and wait for it to end. Its cancellation is expected; any other failure it
    ended with is logged, not raised (the caller is shutting it down either way) — at debug level
    when ``failure_raised_elsewhere``: its owner already raised it to whoever consumed its work."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the caller itself is being cancelled
    except Exception as exc:
        level = logging.DEBUG if failure_raised_elsewhere else logging.WARNING
        logger.log(level, "%s had failed: %s: %s", what, type(exc).__name__, str(exc))
