"""One WebRTC call: a browser's (or any peer's) audio in, the avatar's video and delayed audio out.

A ``PeerSession`` owns an aiortc ``RTCPeerConnection`` and the call's ``RemoteSession`` (its
streaming session runs in a render worker process). Tasks: one reads the remote audio track into
the session, one pumps the session's paced output into the video and audio tracks, one sends
stats over the data channel once a second. A call whose render worker dies ends with the reason
"render worker died", told to the client over the data channel first. Any ending — hang-up,
ICE failure, a peer that vanishes, a timeout, server shutdown — goes through ``close``, which is
idempotent and frees everything; a failure inside one session never reaches another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription

from engines.errors import InputError
from realtime.metrics import ServerMetrics
from realtime.remote_session import RemoteSession, RenderFailed, RenderWorkerLost
from realtime.rtp_buffers import use_prompt_jitter_buffers
from realtime.settings import PeerTimeouts
from realtime.webrtc_tracks import AvatarVideoTrack, DelayedAudioTrack, audio_frame_samples
from realtime.worker_messages import AvatarInfo

logger = logging.getLogger(__name__)
CLOSE_STEP_TIMEOUT_S = 5.0

STATS_INTERVAL_S = 1.0
WATCHDOG_INTERVAL_S = 0.25
FIRST_AUDIO_WAIT_S = 3.0  # after connecting, start the avatar even if no audio has come yet
MAX_MESSAGE_BYTES = 4096
_IN_MEMORY: weakref.WeakSet[PeerSession] = weakref.WeakSet()


def sessions_in_memory() -> int:
    """Calls whose objects still exist: the open ones, plus ended ones not freed yet (a number that
    stays above the open calls once the server is idle means a leak)."""
    return len(_IN_MEMORY)


def check_offer(sdp: str, kind: str) -> None:
    """Refuse offers the avatar cannot serve, before any WebRTC state is made.

    Raises:
        InputError: not an SDP offer; malformed; no audio sent by the peer, or no video it can
            receive; more than one audio or video section, or more than one data channel section.
    """
    if kind != "offer":
        raise InputError('"type" must be "offer"')
    if not sdp.lstrip().startswith("v=0"):
        raise InputError("not an SDP session description (it must start with v=0)")
    try:
        media = SessionDescription.parse(sdp).media
    except Exception as exc:  # the parser meets hostile text: any failure of it means malformed
        logger.info("unparsable SDP offer: %s: %s", type(exc).__name__, str(exc))
        raise InputError("malformed SDP") from None
    if not media:
        raise InputError("malformed SDP: no media sections")
    for kind_of_media in ("audio", "video", "application"):
        if sum(m.kind == kind_of_media for m in media) > 1:
            raise InputError(
                f"the offer has more than one {kind_of_media} section: a call is one voice and one picture"
            )
    directions = {(m.kind, m.direction or "sendrecv") for m in media if m.port != 0}
    if not any(k == "audio" and d in ("sendrecv", "sendonly") for k, d in directions):
        raise InputError("the offer sends no audio: the avatar needs the caller's microphone (or a file)")
    if not any(k == "video" and d in ("sendrecv", "recvonly") for k, d in directions):
        raise InputError("the offer receives no video: add a video transceiver (recvonly)")


def _unusable_offer_reason(error: Exception) -> str:
    """What the caller is told about an offer aiortc could not take (no internal text)."""
    if isinstance(error, OperationError) and "send parameters" in str(error):  # aiortc's wording
        return (
            "unusable SDP offer: no codec in common (the avatar sends VP8 or H.264 video and "
            "takes Opus, G.722, PCMU or PCMA audio)"
        )
    return "unusable SDP offer"


class PeerSession:
    """A call between one peer and one avatar.

    Args:
        session: the call's streaming session, opened on a render worker (closed with the call).
        avatar: the avatar chosen by the client.
        configuration: ICE servers for this peer connection.
        metrics: the server's metrics.
        timeouts: when to give up the call.
        on_closed: called once with this session and the reason when it has ended.
        address: the caller's network address (to limit the calls connecting from one).
    """

    def __init__(
        self,
        session: RemoteSession,
        avatar: AvatarInfo,
        configuration: RTCConfiguration,
        metrics: ServerMetrics,
        timeouts: PeerTimeouts,
        on_closed: Callable[[PeerSession, str], None],
        address: str = "?",
    ) -> None:
        self.id = f"{avatar.name}-{id(self):x}"
        self.address = address
        self.avatar = avatar.name
        self.info = avatar
        self.metrics = metrics
        self.timeouts = timeouts
        self._on_closed = on_closed
        self.pc = RTCPeerConnection(configuration)
        self.session = session
        self.video = AvatarVideoTrack()
        self.audio = DelayedAudioTrack()
        self.channel: RTCDataChannel | None = None
        self.started = time.monotonic()
        self.reason: str | None = None
        self.audio_frames_in = 0
        self._first_audio = asyncio.Event()
        self._connected = asyncio.Event()
        self._connected_at: float | None = None
        self._last_audio = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._disconnect_timer: asyncio.TimerHandle | None = None
        _IN_MEMORY.add(self)

    @property
    def connected(self) -> bool:
        """ICE and DTLS have come up (a call that has not yet only holds a slot)."""
        return self._connected_at is not None or self.pc.connectionState == "connected"

    async def answer(self, sdp: str, kind: str) -> RTCSessionDescription:
        """Take the peer's offer, attach the avatar's tracks and return the answer (ICE gathered).

        Raises:
            InputError: the offer is malformed or unusable (the session is closed).
        """
        try:
            check_offer(sdp, kind)
        except InputError:
            await self.close("bad offer")
            raise
        pc = self.pc
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
            use_prompt_jitter_buffers(pc)  # the session absorbs input jitter itself
            pc.addTrack(self.video)
            pc.addTrack(self.audio)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc meets the peer's SDP: whatever it raises, the offer is unusable
            logger.info("session %s: unusable offer: %s: %s", self.id, type(exc).__name__, str(exc))
            await self.close("bad offer")
            raise InputError(_unusable_offer_reason(exc)) from None
        self._spawn(self._pump())
        self._spawn(self._send_stats())
        self._spawn(self._watchdog())
        return pc.localDescription

    # ------------------------------------------------------------------ tasks

    def _spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or self.reason is not None:
            return
        error = task.exception()
        if error is not None:
            logger.error("session %s failed: %s: %s", self.id, type(error).__name__, str(error))
            self.close_soon("error")

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._read_audio(track))

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        """Remote audio (any rate, mono or stereo) into the session, as it arrives."""
        while self.reason is None:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return  # the peer stopped sending: the session fills silence, the mouth closes
            samples, rate = audio_frame_samples(frame)  # type: ignore[arg-type]
            try:
                await self.session.push_audio(samples, rate)
            except InputError as exc:
                logger.warning("session %s: audio frame refused: %s", self.id, exc)
                continue
            self.audio_frames_in += 1
            self._last_audio = time.monotonic()
            self._first_audio.set()

    async def _pump(self) -> None:
        """The session's paced frames into both tracks at once (lip sync).

        The session's clock starts with the first audio that arrives (not with the answer, which
        comes before ICE and DTLS are up): input then arrives on time from the first frame on.
        """
        await self._connected.wait()  # the watchdog ends a call that never connects
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_audio.wait(), FIRST_AUDIO_WAIT_S)
        try:
            async for frame in self.session.frames():
                self.video.put(frame.index, frame.image)
                self.audio.put(frame.index, frame.audio)
                self.metrics.frame_sent(frame.skipped, self.session.stats.lag_ms)
        except (RenderWorkerLost, RenderFailed) as exc:
            self._send({"type": "error", "reason": str(exc)})
            self.close_soon(str(exc))
            return
        self.video.finish()
        self.audio.finish()

    async def _send_stats(self) -> None:
        while self.reason is None:
            await asyncio.sleep(STATS_INTERVAL_S)
            self._send({"type": "stats", **self.stats()})

    async def _watchdog(self) -> None:
        """Gives up calls that never connect, whose peer went silent on the wire, or that last too long."""
        limits = self.timeouts
        while self.reason is None:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            now = time.monotonic()
            if self._connected_at is None:
                if self.pc.connectionState == "connected":
                    self._connected_at = now
                elif now - self.started > limits.connect_s:
                    self.close_soon("connect timeout")
                    return
                continue
            if now - max(self._connected_at, self._last_audio) > limits.media_s:
                self.close_soon("peer vanished")
                return
            if limits.max_session_s > 0 and now - self.started > limits.max_session_s:
                self.close_soon("session time limit")
                return

    # ------------------------------------------------------------------ signalling

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        logger.info("session %s: connection %s", self.id, state)
        if self._disconnect_timer is not None:
            self._disconnect_timer.cancel()
            self._disconnect_timer = None
        if state == "connected":
            self._connected.set()
        elif state == "failed":
            self.close_soon("ice failed")
        elif state == "closed":
            self.close_soon("hang-up")
        elif state == "disconnected":
            self._disconnect_timer = asyncio.get_running_loop().call_later(
                self.timeouts.disconnected_s, self.close_soon, "peer vanished"
            )

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        channel.on("message", self._on_message)
        channel.on("close", lambda: self.close_soon("hang-up"))

    def _on_message(self, message: str | bytes) -> None:
        """Ping → pong; client measurements → metrics; anything else is ignored (and logged)."""
        if len(message) > MAX_MESSAGE_BYTES:
            return
        try:
            data = json.loads(message)
            kind = data["type"]
        except (ValueError, TypeError, KeyError):
            logger.debug("session %s: unreadable data-channel message", self.id)
            return
        if kind == "ping":
            self._send({"type": "pong", "id": data.get("id"), "client_ms": data.get("client_ms")})
        elif kind == "hangup":
            self.close_soon("hang-up")
        elif kind == "report":
            for key, histogram in (
                ("rtt_ms", self.metrics.client_rtt_ms),
                ("glass_to_glass_ms", self.metrics.glass_to_glass_ms),
            ):
                value = data.get(key)
                if isinstance(value, int | float) and 0 <= value < 60_000:
                    histogram.observe(float(value))

    def _send(self, message: dict[str, Any]) -> None:
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            try:
                channel.send(json.dumps(message))
            except (InvalidStateError, ConnectionError) as exc:  # a transport closing under us
                logger.debug("session %s: data channel message not sent: %s", self.id, exc)

    def stats(self) -> dict[str, Any]:
        """What the client's overlay shows: the pipeline delay, frames, skips, lag, stage times."""
        snapshot = self.session.stats.snapshot()
        return {
            "avatar": self.avatar,
            "pipeline_latency_ms": snapshot["latency_ms"],
            "frames_sent": snapshot["frames_out"],
            "frames_skipped": snapshot["frames_skipped"],
            "lag_ms": snapshot["lag_ms"],
            "audio_frames_in": self.audio_frames_in,
            "stage_ms": snapshot["stage_ms"],
            "backend": self.info.backend,
            "uptime_s": round(time.monotonic() - self.started, 1),
        }

    # ------------------------------------------------------------------ ending

    def close_soon(self, reason: str) -> None:
        """Start closing (from callbacks); safe to call many times."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.close(reason))

    async def close(self, reason: str) -> None:
        """End the call and free its state (idempotent: a second caller waits for the first)."""
        if self.reason is not None:
            await self._closed.wait()
            return
        self.reason = reason
        if self._disconnect_timer is not None:
            self._disconnect_timer.cancel()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        try:
            # Every wait is bounded: a peer stuck in its transport must not hold up a server shutdown.
            for task in list(self._tasks):
                if task is not current:
                    await self._close_step(f"task {task.get_name()}", task)
            self.video.stop()
            self.audio.stop()
            await self._close_step("the streaming session", self.session.close())
            await self._close_step("the peer connection", self.pc.close())
        finally:
            logger.info("session %s ended: %s", self.id, reason)
            self._closed.set()
            self._on_closed(self, reason)

    async def _close_step(self, what: str, step: Awaitable[Any]) -> None:
        """Wait for one part of the call to stop (at most ``CLOSE_STEP_TIMEOUT_S``); a part that
        fails or hangs is logged and left behind, the rest still closes."""
        try:
            await asyncio.wait_for(step, CLOSE_STEP_TIMEOUT_S)
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise  # this close itself is being cancelled
        except TimeoutError:
            logger.warning("session %s: %s did not stop within %.0f s", self.id, what, CLOSE_STEP_TIMEOUT_S)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"  # text: a log record holding exc would hold this call
            logger.warning("session %s: closing %s failed: %s", self.id, what, reason)
