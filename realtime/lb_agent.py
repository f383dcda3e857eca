"""The server's headroom for a load balancer, on HAProxy's agent-check protocol.

HAProxy (``agent-check agent-port N`` on a ``server`` line) connects to this port every
``agent-inter`` and reads one line: ``ready 3%`` sets the server's weight to 3% of its configured
weight (configure ``weight 100``: the weight is then the number of calls it would still admit),
``drain`` stops new requests to it without touching the ones it has. A server that does not
answer is marked down by HAProxy's own checks. Only the headroom travels: routing stays HAProxy's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)
MAX_PERCENT = 100


def agent_reply(headroom: int, stopping: bool) -> bytes:
    """The agent line for a server that would admit ``headroom`` more calls."""
    if stopping or headroom <= 0:
        return b"drain\n"
    return f"ready {min(MAX_PERCENT, headroom)}%\n".encode()


async def serve_agent(host: str, port: int, reply: Callable[[], bytes]) -> asyncio.Server:
    """Listen for HAProxy's agent checks; every connection gets ``reply()`` and is closed.

    Raises:
        OSError: the port cannot be bound.
    """

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(reply())
            await writer.drain()
        except ConnectionError as exc:
            logger.debug("agent check dropped: %s", exc)
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port)
