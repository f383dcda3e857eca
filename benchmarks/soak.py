"""Soak: calls held for a long time on one server — A/V drift, memory, frames and survival.

``stableface serve`` runs in its own process on 127.0.0.1 (measured admission on, ``--max-sessions``
the number of calls); aiortc callers each send ``--minutes`` of generated speech bursts with sharp
onsets (``benchmarks/signals.py``) and record what comes back. Every ``--window-s`` the received
frames and audio of the window are analysed as the latency benchmark does (``lip_timing``: the
mouth probe finds the lips of each onset, envelope cross-correlation its returned sound) and
dropped, so a 30-minute call needs the memory of one window. Per window: the A/V offset of its
onsets (lips-out minus sound-out), audio-in to lips-out, frames received, and the RSS of the server
with its render workers.

Reported per call: the A/V offset drift (median of the last ``DRIFT_WINDOWS`` windows minus the
first's), frames received against the server's sent count (lost on the way) and its repeated
slots, whether the call was still connected at the end; for the server: RSS over the run (spread
around its median after the first minute) and the calls it refused.

Writes ``results/soak-<date>[-<label>].json``, ``.md`` and ``.png`` (offset and memory over time).

    python benchmarks/soak.py [--avatar PATH] [--backend onnxruntime-cpu] [--calls 1] [--minutes 30]
        [--window-s 20] [--label NAME] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks.lip_timing import analyse
from benchmarks.signals import TestSignal, bursts
from engines.timebase import FPS, SAMPLE_RATE_HZ
from offline_training.synthetic.speech import synthesize_speech
from realtime.client import ArrayAudioTrack, AvatarClient, ClientRecording, OfferRefused
from realtime.engine import AvatarEngine
from realtime.mouth_probe import MouthProbe
from realtime.serve_process import process_tree_rss_mb, serve_in_process

CALIBRATION_SEED = 101
KEEP_S = 2.0  # media kept from one window into the next: the lips and sound of its last onsets
DRIFT_WINDOWS = 6  # windows averaged at each end for the drift
TARGET_DRIFT_MS = 10.0
TARGET_MEMORY_SPREAD = 0.05


def window_signal(signal: TestSignal, start_s: float, end_s: float) -> TestSignal:
    """The part of ``signal`` in [start_s, end_s), its onsets relative to ``start_s``."""
    low, high = int(start_s * SAMPLE_RATE_HZ), int(end_s * SAMPLE_RATE_HZ)
    onsets = signal.onsets_s[(signal.onsets_s >= start_s) & (signal.onsets_s < end_s)] - start_s
    return TestSignal(signal.name, signal.audio[low:high], onsets)


class SoakCall:
    """One call and what its windows measured."""

    def __init__(self, url: str, seed: int, seconds: float) -> None:
        self.signal = bursts(seed=seed, seconds=seconds)
        self.track = ArrayAudioTrack(self.signal.audio, SAMPLE_RATE_HZ)
        self.client = AvatarClient(url, self.track, keep_images=True)
        self.windows: list[dict[str, Any]] = []
        self.refused: str | None = None
        self._analysed_to_s = 0.0

    async def connect(self) -> None:
        try:
            await self.client.connect()
        except OfferRefused as refused:
            self.refused = str(refused.body.get("error"))
            await self.client.close()

    def take_window(self, now_s: float) -> tuple[TestSignal, ClientRecording, float] | None:
        """The window since the last one, its media handed over (the last ``KEEP_S`` kept)."""
        started = self.track.started
        if started is None or self.refused is not None:
            return None
        start_s, end_s = self._analysed_to_s, min(now_s - started - KEEP_S, self.signal.duration_s)
        if end_s <= start_s:
            return None
        recording = self.client.recording
        cut = now_s - KEEP_S
        window = ClientRecording(
            video=[v for v in recording.video if v.arrival_s < now_s],
            audio=[a for a in recording.audio if a[0] < now_s],
            audio_rate_hz=recording.audio_rate_hz,
            stats=recording.stats[-1:],
        )
        recording.video = [v for v in recording.video if v.arrival_s >= cut]
        recording.audio = [a for a in recording.audio if a[0] >= cut]
        self._analysed_to_s = end_s
        return window_signal(self.signal, start_s, end_s), window, started + start_s


def analyse_window(
    signal: TestSignal,
    recording: ClientRecording,
    started: float,
    probe: MouthProbe,
    t_s: float,
    rss_mb: float,
) -> dict[str, Any]:
    run = analyse(signal, recording, started, probe)
    offsets, delays = run["av_offset_ms"], run["audio_in_to_lips_out_ms"]
    return {
        "t_s": round(t_s, 1),
        "onsets": run["onsets_sent"],
        "matched": run["onsets_matched"],
        "av_offset_ms_median": float(np.median(offsets)) if offsets else None,
        "audio_in_to_lips_out_ms_median": float(np.median(delays)) if delays else None,
        "frames_received": run["frames_received"],
        "server_rss_mb": round(rss_mb, 1),
        "server": run["server"],
    }


async def soak(
    url: str, pid: int, calls: int, seconds: float, window_s: float, probe: MouthProbe
) -> dict[str, Any]:
    soakers = [SoakCall(url, 30 + index, seconds) for index in range(calls)]
    await asyncio.gather(*(call.connect() for call in soakers))
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    memory: list[tuple[float, float]] = []
    while time.monotonic() - started < seconds + KEEP_S + 1:
        await asyncio.sleep(window_s)
        now = time.monotonic()
        rss = process_tree_rss_mb(pid)
        memory.append((now - started, rss))
        for call in soakers:
            window = call.take_window(now)
            if window is not None:  # probe scores off the event loop that receives the media
                result = await loop.run_in_executor(None, analyse_window, *window, probe, now - started, rss)
                call.windows.append(result)
        print(f"  {now - started:6.0f} s: RSS of the server and its render workers {rss:.0f} MB", flush=True)
    report = {"memory": [{"t_s": round(t, 1), "rss_mb": round(m, 1)} for t, m in memory], "calls": []}
    for call in soakers:
        report["calls"].append(summarise_call(call))
        await call.client.close()
    return report


def summarise_call(call: SoakCall) -> dict[str, Any]:
    if call.refused is not None:
        return {"admitted": False, "refused": call.refused}
    offsets = [w["av_offset_ms_median"] for w in call.windows if w["av_offset_ms_median"] is not None]
    ends = min(DRIFT_WINDOWS, len(offsets) // 2) or 1
    stats = call.client.recording.stats[-1] if call.client.recording.stats else {}
    sent, repeated = stats.get("frames_sent"), stats.get("frames_skipped")
    received = call.client.frames_received
    return {
        "admitted": True,
        "connected_at_end": call.client.pc.connectionState == "connected",
        "windows": call.windows,
        "av_offset_ms": common.percentiles(offsets) if offsets else None,
        "av_drift_ms": float(np.median(offsets[-ends:]) - np.median(offsets[:ends])) if offsets else None,
        "frames_received": received,
        "server_frames_sent": sent,
        "server_frames_repeated": repeated,
        # the data channel's last report lags the last frames by up to a second
        "frames_lost": max(0, sent - received - FPS) if isinstance(sent, int) else None,
    }


def memory_spread(memory: list[dict[str, float]]) -> float | None:
    """Largest relative distance of the RSS from its median, after the first minute."""
    settled = [m["rss_mb"] for m in memory if m["t_s"] >= 60] or [m["rss_mb"] for m in memory]
    if not settled:
        return None
    median = float(np.median(settled))
    return float(max(abs(value - median) for value in settled) / median)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# soak — {result['date']}",
        "",
        common.machine_line(result),
        "",
        f"Avatar `{Path(result['avatar']).name}`, backend {result['backend']}: "
        f"{result['calls_offered']} call(s) offered for {result['minutes']:.1f} min, "
        f"analysed in {result['window_s']:g} s windows. "
        f"Targets: A/V drift ≤ {TARGET_DRIFT_MS:g} ms, RSS (server + render workers) within "
        f"±{100 * TARGET_MEMORY_SPREAD:g}% "
        "after the first minute, no frame lost beyond the repeated ones, every call connected at the end.",
        "",
    ]
    rows = []
    for index, call in enumerate(result["calls"]):
        if not call["admitted"]:
            rows.append([index, "refused", "—", "—", "—", "—", call["refused"]])
            continue
        rows.append(
            [
                index,
                "yes" if call["connected_at_end"] else "**no**",
                common.percentile_text(call["av_offset_ms"]),
                f"{call['av_drift_ms']:+.1f}" if call["av_drift_ms"] is not None else "—",
                f"{call['frames_received']} / {call['server_frames_sent']}",
                f"{call['server_frames_repeated']} repeated, {call['frames_lost']} lost",
                "",
            ]
        )
    lines += common.markdown_table(
        [
            "call",
            "connected at end",
            "A/V offset p50/p95/p99 ms",
            "drift ms",
            "frames received / sent",
            "server frames",
            "refused",
        ],
        "llrrrll",
        rows,
    )
    spread = result["memory_spread"]
    rss = [m["rss_mb"] for m in result["memory"]]
    lines += [
        "",
        f"RSS of the server and its render workers: {min(rss):.0f}–{max(rss):.0f} MB; largest distance "
        "from its median after the first "
        f"minute {100 * spread:.1f}%."
        if spread is not None and rss
        else "RSS: not sampled.",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    with common.figure(path, 2, 1, figsize=(9, 6), sharex=True) as (offset_axis, memory_axis):
        for index, call in enumerate(result["calls"]):
            if call["admitted"]:
                points = [(w["t_s"], w["av_offset_ms_median"]) for w in call["windows"]]
                points = [(t, v) for t, v in points if v is not None]
                if points:
                    offset_axis.plot(*zip(*points, strict=True), marker=".", label=f"call {index}")
        offset_axis.set_ylabel("A/V offset, window median (ms)")
        offset_axis.axhline(0, color="grey", linewidth=0.5)
        offset_axis.legend(loc="upper right")
        memory_axis.plot([m["t_s"] for m in result["memory"]], [m["rss_mb"] for m in result["memory"]])
        memory_axis.set_ylabel("RSS, server + workers (MB)")
        memory_axis.set_xlabel("seconds into the soak")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_avatar_arguments(parser)
    parser.add_argument("--backend", default="onnxruntime-cpu")
    parser.add_argument("--calls", type=int, default=1, help="calls offered at once")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--window-s", type=float, default=20.0, help="analysis window")
    parser.add_argument("--quick", action="store_true", help="one call of 9 s in 4 s windows")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.minutes, args.window_s = 1, 9 / 60, 4.0
    if args.calls < 1 or args.minutes <= 0 or args.window_s <= KEEP_S:
        parser.error(f"--calls ≥ 1, --minutes > 0 and --window-s > {KEEP_S:g} are needed")
    avatar = common.bench_avatar(args.avatar)
    engine = AvatarEngine.load(avatar, args.backend)
    try:
        calibration = synthesize_speech(CALIBRATION_SEED, 4 if args.quick else 10).audio
        probe = MouthProbe.calibrate(engine, calibration)
    finally:
        engine.close()
    arguments = ["--avatar", f"bench={avatar}", "--backend", args.backend, "--max-sessions", str(args.calls)]
    with serve_in_process(arguments) as server:
        measured = asyncio.run(
            soak(server.url, server.process.pid, args.calls, 60 * args.minutes, args.window_s, probe)
        )
    common.report(
        "soak",
        args,
        markdown,
        plot,
        avatar=str(avatar),
        backend=args.backend,
        calls_offered=args.calls,
        minutes=args.minutes,
        window_s=args.window_s,
        memory_spread=memory_spread(measured["memory"]),
        **measured,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
