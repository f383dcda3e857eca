"""Prometheus metrics of one server process (``GET /metrics``).

One registry per server, so that several servers in one process (tests) keep their own counts.
Latencies are in milliseconds, as everywhere in this project; histogram buckets cover a 2-core CPU
(tens of ms per stage) down to a GPU (single ms).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STAGE_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 40, 60, 80, 120, 160, 250, 500, 1000)
NETWORK_BUCKETS_MS = (1, 2, 5, 10, 20, 40, 80, 120, 160, 200, 250, 300, 400, 500, 750, 1000, 2000)
FPS_WINDOW_S = 5.0
LOOP_PROBE_S = 0.1


class ServerMetrics:
    """Counters, gauges and histograms the server and its sessions update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("stableface_sessions_active", "Sessions streaming now", registry=r)
        self.sessions_max = Gauge("stableface_sessions_max", "Session limit of this server", registry=r)
        self.sessions_total = Counter(
            "stableface_sessions", "Sessions ended, by how they ended", ["reason"], registry=r
        )
        self.offers_rejected = Counter(
            "stableface_offers_rejected", "Offers refused, by reason", ["reason"], registry=r
        )
        self.frames_sent = Counter("stableface_frames_sent", "Video frames sent, all sessions", registry=r)
        self.frames_skipped = Counter(
            "stableface_frames_skipped",
            "Output slots that repeated an earlier image (frame not rendered in time)",
            registry=r,
        )
        self.output_fps = Gauge(
            "stableface_output_frames_per_second",
            f"Video frames sent per second, all sessions, over the last {FPS_WINDOW_S:g} s",
            registry=r,
        )
        self.capacity_calls = Gauge(
            "stableface_capacity_calls",
            "Calls of each avatar this server can carry in real time beside the others' calls now "
            "(measured render cost, realtime/capacity.py)",
            ["avatar"],
            registry=r,
        )
        self.headroom_calls = Gauge(
            "stableface_headroom_calls",
            "More calls of each avatar it would admit now",
            ["avatar"],
            registry=r,
        )
        self.render_load = Gauge(
            "stableface_render_load", "Share of the render device's time the admitted calls take", registry=r
        )
        self.recent_repeated_share = Gauge(
            "stableface_recent_repeated_share",
            "Share of output slots that repeated an earlier image over the last 5 s (settled calls)",
            registry=r,
        )
        self.render_workers_ready = Gauge(
            "stableface_render_workers_ready", "Render worker processes up and serving", registry=r
        )
        self.render_worker_restarts = Gauge(
            "stableface_render_worker_restarts",
            "Render worker processes started in place of one that died, since the server started",
            registry=r,
        )
        self.pipeline_latency_ms = Gauge(
            "stableface_pipeline_latency_ms",
            "Configured output delay: audio in -> lips and audio out, per avatar",
            ["avatar"],
            registry=r,
        )
        self.stage_ms = Histogram(
            "stableface_stage_latency_ms",
            "Compute time per chunk and stage",
            ["stage"],
            buckets=STAGE_BUCKETS_MS,
            registry=r,
        )
        self.frame_lag_ms = Histogram(
            "stableface_frame_lag_ms",
            "How far the image shown lags its output slot (0 = rendered in time)",
            buckets=(0, 40, 80, 120, 160, 240, 400, 1000),
            registry=r,
        )
        self.client_rtt_ms = Histogram(
            "stableface_client_rtt_ms",
            "Round trip client -> server -> client measured by data-channel ping, reported by clients",
            buckets=NETWORK_BUCKETS_MS,
            registry=r,
        )
        self.glass_to_glass_ms = Histogram(
            "stableface_glass_to_glass_ms",
            "Client estimate of microphone -> screen: network round trip + pipeline delay + its "
            "jitter buffer and decoding",
            buckets=NETWORK_BUCKETS_MS,
            registry=r,
        )
        self.loop_lag_ms = Histogram(
            "stableface_event_loop_lag_ms",
            f"How late the server's event loop wakes a {LOOP_PROBE_S * 1000:g} ms timer (signalling, "
            "RTP, ICE consent checks all wait on it)",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.max_loop_lag_ms = 0.0
        self._frame_times: deque[float] = deque()

    async def watch_event_loop(self) -> None:
        """Measure the event loop's lag forever (run as a task)."""
        while True:
            started = time.monotonic()
            await asyncio.sleep(LOOP_PROBE_S)
            lag_ms = max(0.0, 1000 * (time.monotonic() - started - LOOP_PROBE_S))
            self.loop_lag_ms.observe(lag_ms)
            self.max_loop_lag_ms = max(self.max_loop_lag_ms, lag_ms)

    def frame_sent(self, skipped: bool, lag_ms: float) -> None:
        """Count one video frame sent by any session."""
        self.frames_sent.inc()
        if skipped:
            self.frames_skipped.inc()
        self.frame_lag_ms.observe(lag_ms)
        now = time.monotonic()
        self._frame_times.append(now)
        while self._frame_times and self._frame_times[0] < now - FPS_WINDOW_S:
            self._frame_times.popleft()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        now = time.monotonic()
        while self._frame_times and self._frame_times[0] < now - FPS_WINDOW_S:
            self._frame_times.popleft()
        self.output_fps.set(len(self._frame_times) / FPS_WINDOW_S)
        return generate_latest(self.registry)
