"""Reading what an HTTP client sends, refusing anything odd with a status and a plain reason."""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

from aiohttp import web


class Refused(Exception):
    """A request the server will not serve: its HTTP status, the reason given to the client
    (never internal exception text) and any more fields for its JSON body."""

    def __init__(self, status: int, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.extra = extra


async def read_json_object(request: web.Request, timeout_s: float) -> dict[str, Any]:
    """The request's body as a JSON object. JSON is UTF-8 (RFC 8259): a declared charset is
    ignored, whatever it names.

    Raises:
        Refused: 408 the body did not arrive within ``timeout_s``; 400 not UTF-8, not JSON,
            nested too deep, or not an object (413, too large, is raised by aiohttp itself).
    """
    try:
        raw = await asyncio.wait_for(request.read(), timeout_s)
    except TimeoutError:
        raise Refused(408, f"the request body did not arrive within {timeout_s:g} s") from None
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refused(400, 'the body must be JSON (UTF-8): {"sdp": ..., "type": "offer"}') from None
    if not isinstance(body, dict):
        raise Refused(400, 'the body must be a JSON object with a string "sdp" and "type"')
    return body


def bearer_matches(request: web.Request, token: str | None) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (always true without a
    token). Constant-time; any bytes in the header, not only ASCII, are simply a mismatch."""
    if token is None:
        return True
    header = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    scheme, _, given = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token.encode())
