"""The STUN/TURN servers a call uses, and who may see their credentials.

A TURN server relays media for anyone holding its credentials, so they go only to callers the
server would let call: with ``--token`` set, ``/config`` gives an unauthorised client the STUN
servers alone. With ``--turn-secret`` (coturn's ``use-auth-secret``, the "TURN REST API"
convention) no long-lived password leaves the server at all: every client gets its own
credentials that expire, ``username = "<unix expiry>:stableface"`` and
``credential = base64(HMAC-SHA1(secret, username))``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

from aiortc import RTCIceServer

from engines.errors import InputError
from realtime.settings import ICE_URL

TURN_USER = "stableface"


def parse_ice_server(url: str) -> RTCIceServer:
    """``stun:host:port`` or ``turn:[USER:SECRET@]host:port[?transport=udp]`` → RTCIceServer.

    Raises:
        InputError: not a STUN/TURN URL.
    """
    match = ICE_URL.match(url)
    if match is None:
        raise InputError(f"--ice-server {url!r}: expected stun:HOST[:PORT] or turn:[USER:SECRET@]HOST[:PORT]")
    plain = f"{match.group(1)}:{match.group('rest')}"
    return RTCIceServer(urls=plain, username=match.group("user"), credential=match.group("secret"))


def turn_rest_credentials(secret: str, ttl_s: float, now_s: float) -> tuple[str, str]:
    """Time-limited TURN credentials that a TURN server holding ``secret`` accepts until
    ``now_s + ttl_s`` (unix seconds): ``(username, credential)``."""
    username = f"{int(now_s + ttl_s)}:{TURN_USER}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def _is_turn(server: RTCIceServer) -> bool:
    urls = server.urls if isinstance(server.urls, str) else server.urls[0]
    return urls.startswith("turn")


@dataclass(frozen=True)
class IceServers:
    """The configured servers, handed out per caller.

    Args:
        servers: parsed ``--ice-server`` URLs.
        turn_secret: shared secret of the TURN servers given without a user (None: static ones).
        ttl_s: how long time-limited credentials stay valid.
    """

    servers: tuple[RTCIceServer, ...]
    turn_secret: str | None = None
    ttl_s: float = 3600.0

    @classmethod
    def parse(
        cls, urls: tuple[str, ...], turn_secret: str | None = None, ttl_s: float = 3600.0
    ) -> IceServers:
        """From ``--ice-server`` URLs.

        Raises:
            InputError: a URL is not STUN/TURN.
        """
        return cls(tuple(parse_ice_server(url) for url in urls), turn_secret, ttl_s)

    def for_call(self, now_s: float | None = None) -> list[RTCIceServer]:
        """What one peer connection uses: static credentials as given, fresh time-limited ones
        for TURN servers given without a user when a secret is set."""
        now_s = time.time() if now_s is None else now_s
        chosen = []
        for server in self.servers:
            if _is_turn(server) and server.username is None and self.turn_secret is not None:
                username, credential = turn_rest_credentials(self.turn_secret, self.ttl_s, now_s)
                server = RTCIceServer(urls=server.urls, username=username, credential=credential)
            chosen.append(server)
        return chosen

    def for_client(self, authorised: bool, now_s: float | None = None) -> list[dict[str, Any]]:
        """``/config``'s list: every server for a caller the server would let call; STUN only
        (no relay, no credentials) for anyone else."""
        servers = self.for_call(now_s) if authorised else [s for s in self.servers if not _is_turn(s)]
        return [{"urls": s.urls, "username": s.username, "credential": s.credential} for s in servers]
