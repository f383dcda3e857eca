"""Settings of a streaming session and of the server, validated, with units in the field names."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engines.audio.features import LogMelConfig
from engines.timebase import FRAME_MS

# A frame's last log-mel window reaches this far past the frame's end (7.5 ms).
FEATURE_MARGIN_MS = LogMelConfig().lead_ms
ICE_URL = re.compile(r"^(stun|stuns|turn|turns):(?:(?P<user>[^:@/]+):(?P<secret>[^@/]+)@)?(?P<rest>[^@\s]+)$")


class StreamSettings(BaseModel):
    """How a session turns live audio into paced video.

    Attributes:
        chunk_frames: C, frames rendered per call; None takes the avatar's streaming config.
        compute_allowance_ms: time granted to compute a chunk once its audio is in; part of the
            fixed output delay (frames not ready by then are skipped, never waited for). None
            takes the avatar's (``StreamingConfig.compute_allowance_ms``: sized for its networks).
        input_jitter_ms: how late live audio may arrive before the gap is filled with silence.
        max_input_ahead_ms: most audio buffered ahead of the output clock; more is dropped.
        silence_dbfs: frames quieter than this (RMS, dBFS) count as silence for the voice gate.
        gate_attack_frames, gate_release_frames: how fast the mouth follows speech onsets and
            closes after speech (frames of the gate's first-order ramp).
        normalisation_time_s: time constant of the running log-mel statistics (voiced frames only).
        ai_mark: draw the "AI-generated" mark on every frame (``engines.ai_mark``).
        audio_lead_ms: how far ahead of its frame the delayed audio is sent. The Opus send path
            delays sound behind the lips (aiortc's resampler holds one 20 ms frame, libopus looks
            6.5 ms ahead), and a sound starts on average half a frame after the frame that first
            shows it: measured over a WebRTC loopback, the returned sound came 45 ms after the lips
            without a lead and 15 ms before them (p50) with 45 ms (docs/benchmarks.md). At most
            80 ms, well inside the pipeline delay, so the samples it reads have arrived.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_frames: int | None = Field(None, ge=1)
    compute_allowance_ms: float | None = Field(None, ge=0)
    input_jitter_ms: float = Field(120.0, ge=0)
    max_input_ahead_ms: float = Field(2000.0, gt=0)
    silence_dbfs: float = -45.0
    gate_attack_frames: float = Field(1.5, gt=0)
    gate_release_frames: float = Field(4.0, gt=0)
    normalisation_time_s: float = Field(20.0, gt=0)
    audio_lead_ms: float = Field(30.0, ge=0, le=80)
    ai_mark: bool = True


def output_delay_frames(chunk_frames: int, lookahead_frames: int, compute_allowance_ms: float) -> int:
    """D, the fixed delay of the output timeline behind the input, in whole frames.

    The first frame of a chunk can be rendered once the audio of the whole chunk and of the
    look-ahead is in (plus the feature window's margin) and the chunk is computed:
    (C + L)·40 ms + 7.5 ms + compute allowance, rounded up to whole frames so that audio and
    video stay frame-aligned.
    """
    delay_ms = (chunk_frames + lookahead_frames) * FRAME_MS + FEATURE_MARGIN_MS + compute_allowance_ms
    return math.ceil(delay_ms / FRAME_MS - 1e-9)


class PeerTimeouts(BaseModel):
    """When a call is given up.

    Attributes:
        connect_s: from the answer until ICE and DTLS are up; a call not up by then gives its
            slot back (a peer on loopback or a LAN connects within a second, through TURN
            within a few).
        disconnected_s: how long a ``disconnected`` connection may take to recover.
        media_s: how long a connected peer may send no audio at all (browsers keep sending
            packets while muted) before it counts as vanished; ICE consent alone takes 30 s.
        max_session_s: longest call (0: no limit).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_s: float = Field(8.0, gt=0)
    disconnected_s: float = Field(5.0, gt=0)
    media_s: float = Field(10.0, gt=0)
    max_session_s: float = Field(0.0, ge=0)


class ServerSettings(BaseModel):
    """How ``stableface serve`` runs.

    Attributes:
        host, port: where to listen (port 0: any free port).
        max_sessions: concurrent calls; more get HTTP 503.
        token: bearer token for ``/offer`` and ``/metrics`` (None: open).
        ice_servers: STUN/TURN URLs, ``turn:USER:SECRET@host:port`` for static credentials.
        turn_secret: shared secret of the TURN servers given without a user: each caller gets
            its own time-limited credentials (``realtime.ice``).
        turn_ttl_s: how long those credentials stay valid.
        cert_file, key_file: TLS certificate and private key, PEM (both or neither).
        timeouts: when calls are given up.
        body_timeout_s: how long a request's declared body may take to arrive.
        max_connecting_per_address: calls from one address that may be connecting at once (ICE
            not up yet: each holds a slot for up to ``timeouts.connect_s``); more get 429. Offices
            behind one NAT address share it.
        admission: ``measured``: a call is admitted only while every admitted call keeps real
            time by the renderers' measured cost (``realtime.capacity``) and the calls' recent
            repeated frames, up to ``max_sessions``; ``max-sessions``: up to ``max_sessions``.
        load_limit: share of the render device's time calls may take (None: by device, 0.45 on
            a CPU, 0.85 on a GPU).
        agent_port: where to answer HAProxy's agent checks with the headroom (None: not at all;
            0: any free port), on ``host``.
        trusted_proxies: addresses of load balancers whose ``X-Forwarded-For`` names the caller.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8080, ge=0, le=65535)
    max_sessions: int = Field(4, ge=1)
    token: str | None = Field(None, min_length=1)
    ice_servers: tuple[str, ...] = ()
    turn_secret: str | None = Field(None, min_length=1)
    turn_ttl_s: float = Field(3600.0, gt=0)
    cert_file: Path | None = None
    key_file: Path | None = None
    timeouts: PeerTimeouts = PeerTimeouts()
    body_timeout_s: float = Field(10.0, gt=0)
    max_connecting_per_address: int = Field(4, ge=1)
    admission: Literal["measured", "max-sessions"] = "measured"
    load_limit: float | None = Field(None, gt=0, le=1)
    agent_port: int | None = Field(None, ge=0, le=65535)
    trusted_proxies: tuple[str, ...] = ()

    @field_validator("ice_servers")
    @classmethod
    def _ice_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            if ICE_URL.match(url) is None:
                raise ValueError(f"{url!r}: expected stun:HOST[:PORT] or turn:[USER:SECRET@]HOST[:PORT]")
        return urls

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("the TLS certificate and key go together (--cert and --key)")
        return self
