"""A Python WebRTC client of ``stableface serve`` (aiortc): tests, benchmarks and scripted calls.

It sends an audio track, records every video frame and audio frame it receives with its arrival
time, and talks the data-channel protocol (ping/pong, stats) of the browser client.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from realtime.rtp_buffers import use_prompt_jitter_buffers
from realtime.tasks import stop_task
from realtime.webrtc_tracks import audio_frame_samples

PACKET_MS = 20
ImageRGB = npt.NDArray[np.uint8]


class ArrayAudioTrack(MediaStreamTrack):
    """Plays samples in real time, 20 ms a frame, then silence (or ends).

    Paced like a microphone: a frame is handed over when its last sample has been "spoken", so
    sample ``s`` happens at ``started + s / rate`` and packetisation counts in measured latency.

    Args:
        samples: (S,) or (S, channels) float in [-1, 1].
        sample_rate_hz: their rate (any rate Opus can be fed after resampling: 8 kHz and up).
        then_silence: keep sending silence after the samples instead of ending the track.
    """

    kind = "audio"

    def __init__(
        self, samples: npt.NDArray[np.floating[Any]], sample_rate_hz: int, then_silence: bool = True
    ) -> None:
        super().__init__()
        data = samples if samples.ndim == 2 else samples[:, None]
        self.pcm = (np.clip(data, -1, 1) * 32767).astype(np.int16)
        self.rate = sample_rate_hz
        self.then_silence = then_silence
        self.packet = sample_rate_hz * PACKET_MS // 1000
        self.sent = 0
        self.started: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.started is None:
            self.started = time.monotonic()
        wait = self.started + (self.sent + self.packet) / self.rate - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = self.pcm[self.sent : self.sent + self.packet]
        if len(chunk) < self.packet:
            if not self.then_silence and not len(chunk):
                self.stop()
                raise MediaStreamError
            chunk = np.concatenate([chunk, np.zeros((self.packet - len(chunk), self.pcm.shape[1]), np.int16)])
        layout = "mono" if self.pcm.shape[1] == 1 else "stereo"
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = self.rate
        frame.pts = self.sent
        frame.time_base = fractions.Fraction(1, self.rate)
        self.sent += self.packet
        return frame


@dataclass
class ReceivedVideo:
    arrival_s: float
    pts: int
    image: ImageRGB


@dataclass
class ClientRecording:
    """What a call received."""

    video: list[ReceivedVideo] = field(default_factory=list)
    audio: list[tuple[float, npt.NDArray[np.float32]]] = field(default_factory=list)  # (arrival, 48 kHz mono)
    audio_rate_hz: int = 48_000
    stats: list[dict[str, Any]] = field(default_factory=list)
    rtt_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # why the server ended the call, if it said


class OfferRefused(Exception):
    """The server answered the offer with an error status."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {body.get('error')}")
        self.status = status
        self.body = body


class AvatarClient:
    """One call to a ``stableface serve`` server.

    Args:
        url: the server's base URL (``http://127.0.0.1:8080/``).
        audio: the track to send.
        avatar: avatar name (None: the server's default).
        token: bearer token, if the server needs one.
        keep_images: store received frames' pixels (memory: W·H·3 bytes a frame).
        prompt_buffers: release received frames as soon as they are complete, as a browser does
            (``realtime.rtp_buffers``); False keeps aiortc's own receive buffering.
        source_address: the local address to send the offer from (None: the system's choice);
            on loopback, ``127.0.0.N`` makes callers distinct addresses, as separate machines are.
        offer_path: where the server takes offers (``offer``; pipecat's demo bot: ``api/offer``).
    """

    def __init__(
        self,
        url: str,
        audio: MediaStreamTrack,
        avatar: str | None = None,
        token: str | None = None,
        keep_images: bool = True,
        prompt_buffers: bool = True,
        source_address: str | None = None,
        offer_path: str = "offer",
    ) -> None:
        self.url = url.rstrip("/")
        self.audio = audio
        self.avatar = avatar
        self.token = token
        self.keep_images = keep_images
        self.prompt_buffers = prompt_buffers
        self.source_address = source_address
        self.offer_path = offer_path.strip("/")
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.recording = ClientRecording()
        self.frames_received = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._pings: dict[int, float] = {}
        self._next_ping = 0
        self.channel = self.pc.createDataChannel("control")
        self.channel.on("message", self._on_message)
        self.connected = asyncio.Event()

    async def connect(self, timeout_s: float = 20.0) -> None:
        """Offer, get the answer, wait until media flows.

        Raises:
            OfferRefused: the server refused the call (its JSON error is in ``body``).
        """
        pc = self.pc
        pc.addTrack(self.audio)
        pc.addTransceiver("video", direction="recvonly")
        if self.prompt_buffers:
            use_prompt_jitter_buffers(pc)  # frames as soon as they are complete, as a browser shows them
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)
        await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
        if self.avatar is not None:
            body["avatar"] = self.avatar
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        local = aiohttp.TCPConnector(local_addr=(self.source_address, 0)) if self.source_address else None
        async with (
            aiohttp.ClientSession(connector=local, timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
            http.post(f"{self.url}/{self.offer_path}", json=body, headers=headers) as response,
        ):
            answer = await response.json()
            if response.status != 200:
                await pc.close()
                raise OfferRefused(response.status, answer)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        await asyncio.wait_for(self.connected.wait(), timeout_s)

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self.connected.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        reader = self._read_video(track) if track.kind == "video" else self._read_audio(track)
        self._tasks.append(asyncio.get_running_loop().create_task(reader))

    async def _read_video(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.VideoFrame)
                self.frames_received += 1
                image: ImageRGB = np.zeros((0, 0, 3), np.uint8)
                if self.keep_images:
                    image = frame.to_ndarray(format="rgb24").astype(np.uint8, copy=False)
                self.recording.video.append(ReceivedVideo(time.monotonic(), int(frame.pts or 0), image))

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame)
                samples, rate = audio_frame_samples(frame)
                pcm = samples.astype(np.float32)
                mono = pcm.mean(axis=1) if pcm.ndim == 2 else pcm
                self.recording.audio_rate_hz = rate
                self.recording.audio.append((time.monotonic(), (mono / 32768.0).astype(np.float32)))

    def _on_message(self, message: str | bytes) -> None:
        data = json.loads(message)
        if data.get("type") == "pong" and data.get("id") in self._pings:
            self.recording.rtt_ms.append(1000 * (time.monotonic() - self._pings.pop(data["id"])))
        elif data.get("type") == "stats":
            self.recording.stats.append(data)
        elif data.get("type") == "error":
            self.recording.errors.append(str(data.get("reason")))

    def ping(self) -> None:
        """Send a ping; the round trip lands in ``recording.rtt_ms``."""
        if self.channel.readyState == "open":
            ping_id = self._next_ping
            self._next_ping += 1
            self._pings[ping_id] = time.monotonic()
            self.channel.send(json.dumps({"type": "ping", "id": ping_id}))

    async def close(self) -> None:
        for task in list(self._tasks):
            await stop_task(task, f"the client's {task.get_name()}")
        await self.pc.close()
