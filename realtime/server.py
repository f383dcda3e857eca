"""``stableface serve``: the avatar over WebRTC (aiohttp for signalling, aiortc for media).

Routes:
    ``GET /``            the browser client (``web_client/``), static files only.
    ``GET /config``      avatars, ICE servers, whether a token is needed (for the client).
    ``POST /offer``      ``{"sdp", "type": "offer", "avatar"?}`` → the server's answer (JSON).
    ``GET /healthz``     liveness and load.
    ``GET /metrics``     Prometheus text format.

Errors are JSON ``{"error": "..."}`` with a 4xx/5xx status; a failing request or session never
stops the others. With ``token`` set, ``/offer`` and ``/metrics`` need ``Authorization: Bearer``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer

from engines.errors import InputError
from realtime.avatars import AvatarCatalog
from realtime.memory import collect_and_release, freeze_loaded_objects
from realtime.metrics import ServerMetrics
from realtime.peer import PeerSession, sessions_in_memory
from realtime.settings import ICE_URL, ServerSettings

logger = logging.getLogger(__name__)

WEB_CLIENT_DIR = Path(__file__).resolve().parents[1] / "web_client"
MAX_BODY_BYTES = 64 * 1024  # an SDP offer is a few kB
IDLE_COLLECT_DELAY_S = 0.5  # after the last call ends, free its memory

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


def _json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


class AvatarServer:
    """The aiohttp application and the calls it runs.

    Args:
        catalog: the loaded avatars.
        settings: limits, token, ICE servers.
    """

    def __init__(self, catalog: AvatarCatalog, settings: ServerSettings) -> None:
        self.catalog = catalog
        self.settings = settings
        self.metrics = ServerMetrics()
        self.metrics.sessions_max.set(settings.max_sessions)
        for name, engine in catalog.engines.items():
            self.metrics.pipeline_latency_ms.labels(name).set(engine.latency_ms)
        self.ice_servers = [parse_ice_server(url) for url in settings.ice_servers]
        self.sessions: set[PeerSession] = set()
        self._reserved = 0
        self.started = time.monotonic()
        self.app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._errors_as_json])
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/config", self._config)
        self.app.router.add_post("/offer", self._offer)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/metrics", self._metrics)
        if WEB_CLIENT_DIR.is_dir():
            self.app.router.add_static("/static/", WEB_CLIENT_DIR, show_index=False, follow_symlinks=False)
        self.app.on_startup.append(self._on_startup)
        self.app.on_shutdown.append(self._on_shutdown)
        self._loop_watch: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def _errors_as_json(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            self.metrics.offers_rejected.labels("too large").inc()
            return _json_error(413, f"request body over {MAX_BODY_BYTES} bytes")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _json_error(exc.status, exc.reason)

    def _authorised(self, request: web.Request) -> bool:
        token = self.settings.token
        if token is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    # ------------------------------------------------------------------ routes

    async def _index(self, request: web.Request) -> web.StreamResponse:
        index = WEB_CLIENT_DIR / "index.html"
        if not index.is_file():
            return _json_error(404, "the web client is not installed")
        return web.FileResponse(index)

    async def _config(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "avatars": self.catalog.describe(),
                "ice_servers": [
                    {"urls": s.urls, "username": s.username, "credential": s.credential}
                    for s in self.ice_servers
                ],
                "token_required": self.settings.token is not None,
                "max_sessions": self.settings.max_sessions,
            }
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "sessions": len(self.sessions),
                "sessions_in_memory": sessions_in_memory(),
                "max_sessions": self.settings.max_sessions,
                "avatars": list(self.catalog.engines),
                "uptime_s": round(time.monotonic() - self.started, 1),
                "max_event_loop_lag_ms": round(self.metrics.max_loop_lag_ms, 1),
            }
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _json_error(401, "missing or wrong bearer token")
        self.metrics.sessions_active.set(len(self.sessions))
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def _offer(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            self.metrics.offers_rejected.labels("unauthorised").inc()
            return _json_error(401, "missing or wrong bearer token")
        try:
            body = json.loads(await request.text())
        except (ValueError, UnicodeDecodeError):
            self.metrics.offers_rejected.labels("malformed").inc()
            return _json_error(400, 'the body must be JSON: {"sdp": ..., "type": "offer"}')
        if not isinstance(body, dict) or not isinstance(body.get("sdp"), str):
            self.metrics.offers_rejected.labels("malformed").inc()
            return _json_error(400, 'the body must be a JSON object with a string "sdp" and "type"')
        avatar = body.get("avatar")
        if avatar is not None and not isinstance(avatar, str):
            self.metrics.offers_rejected.labels("malformed").inc()
            return _json_error(400, '"avatar" must be a name')
        try:
            engine = self.catalog.get(avatar)
        except InputError as exc:
            self.metrics.offers_rejected.labels("unknown avatar").inc()
            return _json_error(404, str(exc), avatars=list(self.catalog.engines))
        if len(self.sessions) + self._reserved >= self.settings.max_sessions:
            self.metrics.offers_rejected.labels("full").inc()
            return _json_error(
                503, f"the server is full ({self.settings.max_sessions} sessions); try again later"
            )
        self._reserved += 1
        try:
            session = PeerSession(
                engine,
                avatar or self.catalog.default,
                RTCConfiguration(iceServers=self.ice_servers),
                self.metrics,
                self.settings.timeouts,
                self._session_closed,
            )
            try:
                answer = await session.answer(body["sdp"], str(body.get("type")))
            except InputError as exc:
                await session.close("bad offer")
                self.metrics.offers_rejected.labels("bad sdp").inc()
                return _json_error(400, str(exc))
            self.sessions.add(session)
            self.metrics.sessions_active.set(len(self.sessions))
        finally:
            self._reserved -= 1
        logger.info("session %s: answered (%d active)", session.id, len(self.sessions))
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "session": session.id})

    def _session_closed(self, session: PeerSession, reason: str) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.metrics.sessions_total.labels(reason).inc()
        self.metrics.sessions_active.set(len(self.sessions))
        if not self.sessions:
            # after the closing call has returned, so its own objects are unreachable too
            asyncio.get_running_loop().call_later(IDLE_COLLECT_DELAY_S, self._collect_if_idle)

    def _collect_if_idle(self) -> None:
        if not self.sessions and not self._reserved:
            collected, took_ms = collect_and_release()
            logger.info("idle: freed %d objects of the ended calls in %.0f ms", collected, took_ms)

    async def _on_startup(self, app: web.Application) -> None:
        freeze_loaded_objects()
        self._loop_watch = asyncio.get_running_loop().create_task(self.metrics.watch_event_loop())

    async def _on_shutdown(self, app: web.Application) -> None:
        if self._loop_watch is not None:
            self._loop_watch.cancel()
        await self.close_sessions("server shutdown")

    async def close_sessions(self, reason: str) -> None:
        """End every call (graceful shutdown)."""
        await asyncio.gather(*(session.close(reason) for session in list(self.sessions)))

    # ------------------------------------------------------------------ running

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS from ``cert``/``key`` (browsers allow the microphone only on https or localhost)."""
        cert, key = self.settings.cert_file, self.settings.key_file
        if cert is None or key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise InputError(f"cannot load the TLS certificate {cert} / key {key}: {exc}") from None
        return context

    async def start(self) -> web.AppRunner:
        """Listen (for tests and embedding); stop with ``await runner.cleanup()``."""
        runner = web.AppRunner(self.app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port, ssl_context=self.ssl_context())
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise InputError(
                f"cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror}"
            ) from None
        if self.settings.port == 0:  # an ephemeral port: record the one chosen
            self.settings = self.settings.model_copy(update={"port": int(runner.addresses[0][1])})
        return runner

    async def serve_until_stopped(self, ready: Callable[[str], None] | None = None) -> None:
        """Listen until SIGINT/SIGTERM, then end every call and stop."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        runner = await self.start()
        if ready is not None:
            ready(self.url)
        try:
            await stop.wait()
        finally:
            logger.info("shutting down: closing %d sessions", len(self.sessions))
            await runner.cleanup()

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.cert_file else "http"
        return f"{scheme}://{self.settings.host}:{self.settings.port}/"
