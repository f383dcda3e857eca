"""``stableface serve``: the avatar over WebRTC (aiohttp for signalling, aiortc for media).

Routes:
    ``GET /``            the browser client (``web_client/``), static files only.
    ``GET /config``      avatars, ICE servers, whether a token is needed (for the client).
    ``POST /offer``      ``{"sdp", "type": "offer", "avatar"?}`` → the server's answer (JSON).
    ``GET /healthz``     liveness and load.
    ``GET /metrics``     Prometheus text format.

Errors are JSON ``{"error": "..."}`` with a 4xx/5xx status; a failing request or session never
stops the others. With ``token`` set, ``/offer`` and ``/metrics`` need ``Authorization: Bearer``,
and ``/config`` gives TURN servers only with it. docs/hostile-input.md lists what each hostile
request gets.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiortc import RTCConfiguration, RTCSessionDescription

from engines.errors import InputError
from realtime.admission import Admission
from realtime.http_input import Refused, bearer_matches, read_json_object
from realtime.ice import IceServers
from realtime.lb_agent import agent_reply, serve_agent
from realtime.memory import collect_and_release, freeze_loaded_objects
from realtime.metrics import ServerMetrics
from realtime.peer import PeerSession, check_offer, sessions_in_memory
from realtime.remote_session import RenderWorkerLost
from realtime.repeat_watch import CallCount
from realtime.settings import ServerSettings
from realtime.worker_pool import RenderPool

logger = logging.getLogger(__name__)

WEB_CLIENT_DIR = Path(__file__).resolve().parents[1] / "web_client"
MAX_BODY_BYTES = 64 * 1024  # an SDP offer is a few kB
FULL_RETRY_AFTER_S = 10
IDLE_COLLECT_DELAY_S = 0.5  # after the last call ends, free its memory
WATCH_INTERVAL_S = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_error(status: int, message: str, retry_after_s: float | None = None, **extra: Any) -> web.Response:
    headers = {"Retry-After": str(round(retry_after_s))} if retry_after_s is not None else None
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


class RedactedAccessLogger(AbstractAccessLogger):
    """The access log without query values: a token put in a URL must not reach the logs."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        query = "&".join(f"{key}=…" for key in request.rel_url.query)
        path = f"{request.path}?{query}" if query else request.path
        self.logger.info(
            '%s "%s %s" %d %.1f ms', request.remote, request.method, path, response.status, 1000 * time
        )


def tls_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """The server's TLS context from ``cert_file``/``key_file`` (None without them); checked before
    the render workers start, so a bad pair is reported at once.

    Raises:
        InputError: the certificate or key cannot be loaded.
    """
    cert, key = settings.cert_file, settings.key_file
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"cannot load the TLS certificate {cert} / key {key}: {exc}") from None
    return context


class AvatarServer:
    """The aiohttp application and the calls it runs.

    Args:
        pool: the render workers, with the avatars loaded (the server does not own them: whoever
            started them stops them, after the server).
        settings: limits, token, ICE servers.
    """

    def __init__(self, pool: RenderPool, settings: ServerSettings) -> None:
        self.pool = pool
        self.settings = settings
        self.metrics = ServerMetrics()
        self.metrics.sessions_max.set(settings.max_sessions)
        for name, info in pool.avatars.items():
            self.metrics.pipeline_latency_ms.labels(name).set(info.latency_ms)
        self._observe_stage = lambda stage, ms: self.metrics.stage_ms.labels(stage).observe(ms)
        pool.observe_stages(self._observe_stage)
        self.ice = IceServers.parse(settings.ice_servers, settings.turn_secret, settings.turn_ttl_s)
        self.sessions: set[PeerSession] = set()
        self._answering: set[PeerSession] = set()  # offers being answered: they hold a slot
        self._stopping = False
        self.admission = Admission(pool, settings)
        self.started = time.monotonic()
        self.app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._errors_as_json])
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/config", self._config)
        self.app.router.add_post("/offer", self._offer)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/static/{name}", self._static)
        self.app.router.add_get("/favicon.ico", self._favicon)
        self.app.on_startup.append(self._on_startup)
        self.app.on_shutdown.append(self._on_shutdown)
        self._background: list[asyncio.Task[None]] = []
        self._agent: asyncio.Server | None = None

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def _errors_as_json(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            self.metrics.offers_rejected.labels("too large").inc()
            return _json_error(413, f"request body over {MAX_BODY_BYTES} bytes")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _json_error(exc.status, exc.reason)
        except Exception:
            logger.exception("%s %s failed", request.method, request.path)
            return _json_error(500, "internal error (logged on the server)")
        return response

    def _authorised(self, request: web.Request) -> bool:
        return bearer_matches(request, self.settings.token)

    # ------------------------------------------------------------------ routes

    async def _index(self, request: web.Request) -> web.StreamResponse:
        index = WEB_CLIENT_DIR / "index.html"
        if not index.is_file():
            return _json_error(404, "the web client is not installed")
        return web.FileResponse(index)

    async def _static(self, request: web.Request) -> web.StreamResponse:
        """A file of the web client (no folders, no hidden files, nothing outside it)."""
        name = request.match_info["name"]
        path = WEB_CLIENT_DIR / name
        if name.startswith(".") or path.resolve().parent != WEB_CLIENT_DIR.resolve() or not path.is_file():
            return _json_error(404, f"no such file: /static/{name}")
        return web.FileResponse(path)

    async def _favicon(self, request: web.Request) -> web.StreamResponse:
        icon = WEB_CLIENT_DIR / "favicon.svg"
        if not icon.is_file():
            return _json_error(404, "no icon")
        return web.FileResponse(icon, headers={"Content-Type": "image/svg+xml"})

    async def _config(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "avatars": self.pool.describe(),
                "ice_servers": self.ice.for_client(self._authorised(request)),
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
                "avatars": list(self.pool.avatars),
                "uptime_s": round(time.monotonic() - self.started, 1),
                "max_event_loop_lag_ms": round(self.metrics.max_loop_lag_ms, 1),
                **self.admission.health(),
            }
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _json_error(401, "missing or wrong bearer token")
        self.metrics.sessions_active.set(len(self.sessions))
        self.admission.update_metrics(self.metrics)
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def _offer(self, request: web.Request) -> web.Response:
        try:
            session, answer = await self._answer_offer(request)
        except Refused as refusal:
            retry = {503: FULL_RETRY_AFTER_S, 429: self.settings.timeouts.connect_s}.get(refusal.status)
            return _json_error(refusal.status, refusal.reason, retry_after_s=retry, **refusal.extra)
        logger.info("session %s: answered (%d active)", session.id, len(self.sessions))
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "session": session.id})

    async def _answer_offer(self, request: web.Request) -> tuple[PeerSession, RTCSessionDescription]:
        """Check the offer, hold a slot, answer it.

        Raises:
            Refused: anything the call cannot go ahead with (counted by reason).
        """
        rejected = self.metrics.offers_rejected
        if self._stopping:
            raise Refused(503, "the server is shutting down")
        if not self._authorised(request):
            rejected.labels("unauthorised").inc()
            raise Refused(401, "missing or wrong bearer token")
        try:
            body = await read_json_object(request, self.settings.body_timeout_s)
        except Refused:
            rejected.labels("malformed").inc()
            raise
        if not isinstance(body.get("sdp"), str):
            rejected.labels("malformed").inc()
            raise Refused(400, 'the body must be a JSON object with a string "sdp" and "type"')
        avatar = body.get("avatar")
        if avatar is not None and not isinstance(avatar, str):
            rejected.labels("malformed").inc()
            raise Refused(400, '"avatar" must be a name')
        try:
            info = self.pool.get(avatar)
        except InputError as exc:
            rejected.labels("unknown avatar").inc()
            raise Refused(404, str(exc), avatars=list(self.pool.avatars)) from None
        try:  # a broken offer is the client's to fix, whatever the load
            check_offer(body["sdp"], str(body.get("type")))
        except InputError as exc:
            rejected.labels("bad sdp").inc()
            raise Refused(400, str(exc)) from None
        if len(self.sessions) + len(self._answering) >= self.settings.max_sessions:
            rejected.labels("full").inc()
            raise Refused(503, f"the server is full ({self.settings.max_sessions} sessions); try again later")
        worker = self.admission.choose(info.name)
        if isinstance(worker, str):
            rejected.labels("capacity").inc()
            raise Refused(503, worker)
        address = self._caller_address(request)
        pending = [s for s in self.sessions | self._answering if s.address == address and not s.connected]
        if len(pending) >= self.settings.max_connecting_per_address:
            rejected.labels("pending").inc()
            raise Refused(429, f"{len(pending)} calls from this address are still connecting; wait for them")
        try:
            remote = worker.open_call(info.name)
        except RenderWorkerLost as exc:  # it died since it was chosen
            rejected.labels("capacity").inc()
            raise Refused(503, f"{exc}; try again in a few seconds") from None
        session = PeerSession(
            remote,
            info,
            RTCConfiguration(iceServers=self.ice.for_call()),
            self.metrics,
            self.settings.timeouts,
            self._session_closed,
            address,
        )
        self._answering.add(session)
        try:
            answer = await session.answer(body["sdp"], str(body.get("type")))
        except InputError as exc:
            if not self._stopping:
                rejected.labels("bad sdp").inc()
                raise Refused(400, str(exc)) from None
        finally:
            self._answering.discard(session)
        if self._stopping or session.reason is not None:  # closed while being answered
            await session.close("server shutdown")
            raise Refused(503, "the server is shutting down")
        self.sessions.add(session)
        self.metrics.sessions_active.set(len(self.sessions))
        return session, answer

    def _caller_address(self, request: web.Request) -> str:
        """The caller's address: the peer's, or behind a trusted load balancer the last
        ``X-Forwarded-For`` entry (the one the balancer added; earlier ones the caller can forge)."""
        remote = request.remote or "?"
        forwarded = request.headers.get("X-Forwarded-For")
        if remote in self.settings.trusted_proxies and forwarded:
            return forwarded.split(",")[-1].strip() or remote
        return remote

    # ------------------------------------------------------------------ capacity

    def headroom(self) -> int:
        """How many more calls of the default avatar the server would admit now."""
        return self.admission.capacity()[self.pool.default]["headroom"]

    async def _watch_calls(self) -> None:
        """Once a second: the calls' repeated frames, and the capacity gauges."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            self.admission.repeats.sample(
                now,
                [
                    CallCount(s, now - s.started, s.session.stats.frames_out, s.session.stats.frames_skipped)
                    for s in self.sessions
                ],
            )
            self.admission.update_metrics(self.metrics)

    def _session_closed(self, session: PeerSession, reason: str) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.metrics.sessions_total.labels(reason).inc()
        self.metrics.sessions_active.set(len(self.sessions))
        if not self.sessions:
            # after the closing call has returned, so its own objects are unreachable too
            asyncio.get_running_loop().call_later(IDLE_COLLECT_DELAY_S, self._collect_if_idle)

    def _collect_if_idle(self) -> None:
        if not self.sessions and not self._answering:
            collected, took_ms = collect_and_release()
            logger.info("idle: freed %d objects of the ended calls in %.0f ms", collected, took_ms)

    async def _on_startup(self, app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self.metrics.watch_event_loop()),
            loop.create_task(self._watch_calls()),
        ]

    async def _on_shutdown(self, app: web.Application) -> None:
        self._stopping = True  # the agent says "drain" from now on
        if self._agent is not None:
            self._agent.close()
        for task in self._background:
            task.cancel()
        await self.close_sessions("server shutdown")
        self.pool.stop_observing(self._observe_stage)

    async def close_sessions(self, reason: str) -> None:
        """End every call, those being answered included (graceful shutdown)."""
        calls = list(self.sessions | self._answering)
        await asyncio.gather(*(session.close(reason) for session in calls))

    # ------------------------------------------------------------------ running

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS from ``cert``/``key`` (browsers allow the microphone only on https or localhost)."""
        return tls_context(self.settings)

    async def start(self) -> web.AppRunner:
        """Listen (for tests and embedding); stop with ``await runner.cleanup()``."""
        runner = web.AppRunner(self.app, handle_signals=False, access_log_class=RedactedAccessLogger)
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
        if self.settings.agent_port is not None:
            await self._start_agent(runner)
        return runner

    async def _start_agent(self, runner: web.AppRunner) -> None:
        """Answer HAProxy's agent checks with the default avatar's headroom.

        Raises:
            InputError: the agent port cannot be bound (the server is stopped again).
        """
        assert self.settings.agent_port is not None
        try:
            self._agent = await serve_agent(
                self.settings.host,
                self.settings.agent_port,
                lambda: agent_reply(self.headroom(), self._stopping),
            )
        except OSError as exc:
            await runner.cleanup()
            where = f"{self.settings.host}:{self.settings.agent_port}"
            raise InputError(f"cannot listen for agent checks on {where}: {exc.strerror}") from None
        port = self._agent.sockets[0].getsockname()[1]
        self.settings = self.settings.model_copy(update={"agent_port": int(port)})
        logger.info("agent checks (headroom for HAProxy) on %s:%d", self.settings.host, port)

    async def serve_until_stopped(self, ready: Callable[[str], None] | None = None) -> None:
        """Listen until SIGINT/SIGTERM, then end every call and stop."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        freeze_loaded_objects()  # this process is the server's own (an embedding app's objects are not ours)
        runner = await self.start()
        if ready is not None:
            ready(self.url)
        try:
            await stop.wait()
        finally:
            logger.info("shutting down: closing %d sessions", len(self.sessions | self._answering))
            await runner.cleanup()

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.cert_file else "http"
        return f"{scheme}://{self.settings.host}:{self.settings.port}/"
