"""Latency: per pipeline stage, and from the caller's voice to the avatar's lips over real WebRTC.

1. **Stages** (in process, one avatar, per backend and chunk size C): 48 kHz audio is pushed in
   20 ms packets as a browser sends it; for each chunk of C frames the time spent in each stage
   — resample (48 → 16 kHz), features (log-mel), audio2expression, smoothing (weights), raster
   (face shapes, smoothed), renderer, paste (back into the full frame), encode (VP8, the codec
   aiortc sends, at aiortc's settings) — is recorded; p50/p95/p99 in ms per chunk.
2. **Mouth-to-photon** (end to end): ``stableface serve`` runs in its own process on 127.0.0.1;
   an aiortc client (``realtime.client``) calls it and sends speech with sharp, known onsets
   (``benchmarks/signals.py``: generated speech bursts, and pieces of real recordings). The client
   records every decoded video frame and audio packet with its arrival time. A pixel probe
   calibrated on the avatar (``realtime.mouth_probe``) reads the mouth opening of each received
   frame; the first frame whose mouth opens after each sent onset is "lips out". Reported:
   audio-in → lips-out (the sound is made → the frame showing it is decoded at the client) and
   audio-out ↔ lips-out (lips-out minus the onset in the audio the client received and would
   play; positive = the lips come after the sound), each p50/p95/p99 over the onsets, plus the
   server's frame skips and the best lag of the mouth/loudness cross-correlation as a check.

Writes ``results/latency-<date>.json``, ``.md`` and ``.png`` (CDFs).

    python benchmarks/latency.py [--avatar PATH] [--backends onnxruntime-cpu torch-cpu]
        [--chunks 1 2 4] [--timed-chunks 300] [--signals bursts speech] [--seconds 30] [--quick]

Without ``--avatar``: the bundled default avatar.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import av
import numpy as np
from scipy.signal import resample_poly

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks.lip_timing import analyse, render_response
from benchmarks.signals import TestSignal, bursts, speech_pieces
from engines.timebase import FPS
from offline_training.synthetic.speech import synthesize_speech
from realtime.audio_input import AudioInput
from realtime.client import ArrayAudioTrack, AvatarClient, ClientRecording
from realtime.engine import AvatarEngine
from realtime.mouth_probe import MouthProbe
from realtime.serve_process import serve_in_process
from realtime.settings import StreamSettings

SEND_RATE_HZ = 48_000  # what browsers capture and send
PACKET_SAMPLES = SEND_RATE_HZ // 50  # 20 ms
STAGES = ("resample", "features", "audio2expression", "smoothing", "raster", "renderer", "paste", "encode")
SPEECH = common.REPO.parent / "shared" / "data" / "speech"
CALIBRATION_SEED = 101
TAIL_S = 1.5  # keep the call open this long after the signal (the pipeline delay and transport)
TARGET_DELAY_P95_MS = 250.0
TARGET_AV_P95_MS = 45.0


# ---------------------------------------------------------------------------------------- stages


def vp8_encoder() -> Any:
    """aiortc's VP8 encoder, as its RTP sender creates it."""
    from aiortc.codecs import get_encoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    return get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90_000, payloadType=96))


def stage_latency(engine: AvatarEngine, timed_chunks: int, warmup_chunks: int = 5) -> dict[str, Any]:
    """Per-chunk milliseconds of every stage, ``timed_chunks`` chunks of generated speech."""
    chunk = engine.backend.shape.chunk_frames
    frames = (timed_chunks + warmup_chunks) * chunk + 10
    speech16 = synthesize_speech(7, frames / FPS + 1).audio
    speech48 = resample_poly(speech16, 3, 1).astype(np.float32)
    stream = engine.new_stream()
    current: dict[str, float] = defaultdict(float)

    def observe(stage: str, ms: float) -> None:
        current[stage] += ms

    stream.times.observer = observe
    audio_input, encoder = AudioInput(), vp8_encoder()
    per_chunk: dict[str, list[float]] = {stage: [] for stage in STAGES}
    done, frame_index = 0, 0
    for first in range(0, len(speech48), PACKET_SAMPLES):
        started = time.perf_counter()
        samples = audio_input.convert(speech48[first : first + PACKET_SAMPLES], SEND_RATE_HZ)
        current["resample"] += 1000 * (time.perf_counter() - started)
        stream.push(samples)
        while stream.chunk_ready() and done < timed_chunks + warmup_chunks:
            for frame in stream.render_chunk():
                assert frame.image is not None
                video = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
                video.pts, video.time_base = frame_index * 3600, fractions.Fraction(1, 90_000)
                started = time.perf_counter()
                encoder.encode(video)
                current["encode"] += 1000 * (time.perf_counter() - started)
                frame_index += 1
            if done >= warmup_chunks:
                for stage in STAGES:
                    per_chunk[stage].append(current.get(stage, 0.0))
            current.clear()
            done += 1
        if done >= timed_chunks + warmup_chunks:
            break
    totals = [sum(values) for values in zip(*per_chunk.values(), strict=True)]
    return {
        "chunks_timed": len(totals),
        "stage_ms_per_chunk": {stage: common.percentiles(values) for stage, values in per_chunk.items()},
        "total_ms_per_chunk": common.percentiles(totals),
        "total_ms_per_frame": {q: value / chunk for q, value in common.percentiles(totals).items()},
        "frames_per_s": 1000 * chunk / common.percentiles(totals)["p50"],
    }


# ------------------------------------------------------------------------------ mouth-to-photon


async def call(url: str, signal: TestSignal) -> tuple[ClientRecording, float]:
    """Play ``signal`` into a call to the server; returns what came back and when sample 0 was made."""
    track = ArrayAudioTrack(resample_poly(signal.audio, 3, 1).astype(np.float32), SEND_RATE_HZ)
    client = AvatarClient(url, track, keep_images=True)
    try:
        await client.connect()
        while track.started is None:
            await asyncio.sleep(0.01)
        end = track.started + signal.duration_s + TAIL_S
        while time.monotonic() < end:
            client.ping()
            await asyncio.sleep(0.5)
        return client.recording, track.started
    finally:
        await client.close()


def mouth_to_photon(
    avatar: Path,
    backend: str,
    settings: StreamSettings,
    signals: list[TestSignal],
    probe: MouthProbe,
) -> dict[str, Any]:
    """One server process, one call per signal; delays pooled over the signals."""
    runs = []
    arguments = ["--avatar", f"bench={avatar}", "--backend", backend]
    arguments += ["--chunk", str(settings.chunk_frames)] if settings.chunk_frames else []
    if settings.compute_allowance_ms is not None:
        arguments += ["--compute-allowance-ms", str(settings.compute_allowance_ms)]
    with serve_in_process(arguments) as server:
        url = server.url
        for signal in signals:
            recording, started = asyncio.run(call(url, signal))
            runs.append(analyse(signal, recording, started, probe))
            print(
                f"    {signal.name}: {runs[-1]['onsets_matched']}/{runs[-1]['onsets_sent']} onsets, "
                f"{runs[-1]['frames_received']} frames",
                flush=True,
            )
    delays = [value for run in runs for value in run["audio_in_to_lips_out_ms"]]
    unmatched = [value for run in runs for value in run["unmatched_lateness_ms"]]
    offsets = [value for run in runs for value in run["av_offset_ms"]]
    return {
        "audio_in_to_lips_out_ms": common.percentiles(delays) if delays else None,
        # every sent onset, the unmatched ones at their lateness (a bound that never flatters)
        "audio_in_to_lips_out_conservative_ms": common.percentiles(delays + unmatched) if delays else None,
        "av_offset_ms": common.percentiles(offsets) if offsets else None,
        "abs_av_offset_ms": common.percentiles(np.abs(offsets)) if offsets else None,
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------- report


def stream_settings(args: argparse.Namespace, chunk: int | None) -> StreamSettings:
    """The stream settings under test: the chunk size, and the compute allowance if given."""
    if args.compute_allowance_ms is None:
        return StreamSettings(chunk_frames=chunk)
    return StreamSettings(chunk_frames=chunk, compute_allowance_ms=args.compute_allowance_ms)


def make_signals(names: list[str], seconds: float, speech_files: list[Path]) -> list[TestSignal]:
    signals = []
    if "bursts" in names:
        signals.append(bursts(seed=3, seconds=seconds))
    if "speech" in names:
        per_file = max(8.0, seconds / max(1, len(speech_files)))
        signals += [speech_pieces(path, seed=5, seconds=per_file) for path in speech_files]
    return signals


def measure(args: argparse.Namespace, avatar: Path) -> list[dict[str, Any]]:
    rows = []
    signals = make_signals(args.signals, args.seconds, args.speech) if not args.skip_loopback else []
    for backend in args.backends:
        for chunk in args.chunks:
            settings = stream_settings(args, chunk)
            engine = AvatarEngine.load(avatar, backend, settings)
            try:
                shape = engine.backend.shape
                row: dict[str, Any] = {
                    "backend": engine.backend.name,
                    "preset": engine.bundle.config.preset,
                    "chunk_frames": shape.chunk_frames,
                    "past_frames": shape.past_frames,
                    "pipeline_delay_ms": engine.latency_ms,
                    "latency_budget_ms": engine.latency_budget(),
                }
                print(f"{row['backend']} C={shape.chunk_frames}: stages ...", flush=True)
                row["stages"] = stage_latency(engine, args.timed_chunks)
                probe = None
                if signals:
                    calibration = synthesize_speech(CALIBRATION_SEED, 4 if args.quick else 10).audio
                    probe = MouthProbe.calibrate(engine, calibration)
                    row["render_response_ms"], row["probe_fidelity"] = render_response(engine, signals, probe)
            finally:
                engine.close()
            if probe is not None:
                print(f"{row['backend']} C={shape.chunk_frames}: WebRTC loopback ...", flush=True)
                row["loopback"] = mouth_to_photon(avatar, backend, settings, signals, probe)
            rows.append(row)
            print(summary_line(row), flush=True)
    return rows


def summary_line(row: dict[str, Any]) -> str:
    total = row["stages"]["total_ms_per_chunk"]
    text = (
        f"{row['preset']} {row['backend']} C={row['chunk_frames']}: chunk "
        f"{total['p50']:.1f}/{total['p95']:.1f}/{total['p99']:.1f} ms, "
        f"{row['stages']['frames_per_s']:.1f} frames/s, pipeline delay "
        f"{row['pipeline_delay_ms']:.0f} ms"
    )
    loop = row.get("loopback")
    if loop and loop["audio_in_to_lips_out_ms"]:
        delay, offset = loop["audio_in_to_lips_out_ms"], loop["abs_av_offset_ms"] or {}
        text += (
            f"; audio-in → lips-out {delay['p50']:.0f}/{delay['p95']:.0f}/{delay['p99']:.0f} ms, "
            f"|A/V| p95 {offset.get('p95', float('nan')):.0f} ms"
        )
    return text


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# latency — {result['date']}",
        "",
        f"{common.machine_line(result)}. Avatar `{result['avatar']}`.",
        "",
        "## Stages (ms per chunk, p50 / p95 / p99)",
        "",
    ]
    cells = [
        [row["preset"], row["backend"], row["chunk_frames"]]
        + [common.percentile_text(stages["stage_ms_per_chunk"][stage], 1) for stage in STAGES]
        + [common.percentile_text(stages["total_ms_per_chunk"]), f"{stages['frames_per_s']:.1f}"]
        for row in result["rows"]
        for stages in [row["stages"]]
    ]
    columns = ["preset", "backend", "C", *STAGES, "total", "frames/s"]
    lines += common.markdown_table(columns, "llr" + "r" * (len(STAGES) + 2), cells)
    looped = [row for row in result["rows"] if row.get("loopback")]
    if looped:
        lines += [
            "",
            "## Mouth-to-photon over a WebRTC loopback (ms, p50 / p95 / p99)",
            "",
            f"Targets: audio-in → lips-out ≤ {TARGET_DELAY_P95_MS:.0f} ms p95, |A/V| ≤ "
            f"{TARGET_AV_P95_MS:.0f} ms p95. A/V offset > 0: lips after the sound.",
            "",
        ]
        columns = ["preset", "backend", "C", "pipeline delay", "render response", "audio-in → lips-out"]
        columns += ["… every onset (unmatched: their lateness)", "A/V offset", "abs A/V offset", "onsets"]
        columns += ["server skipped frames", "xcorr lag", "probe fidelity r"]
        lines += common.markdown_table(columns, "llrrrrrrrrrrr", [_loopback_cells(row) for row in looped])
        lines += [
            "",
            "Probe fidelity: the correlation of the mouth probe's scores with the rendered frames' true "
            "inner-lip areas over every test signal, in process (realtime/mouth_probe.py).",
        ]
    return "\n".join(lines) + "\n"


def _loopback_cells(row: dict[str, Any]) -> list[object]:
    """One row of the mouth-to-photon table: the delays, then the counts summed over the signals."""
    loop = row["loopback"]
    runs = loop["runs"]
    matched = sum(run["onsets_matched"] for run in runs)
    sent = sum(run["onsets_sent"] for run in runs)
    skipped = sum(run["server"]["frames_skipped"] or 0 for run in runs)
    frames = sum(run["server"]["frames_sent"] or 0 for run in runs)
    return [
        row["preset"],
        row["backend"],
        row["chunk_frames"],
        f"{row['pipeline_delay_ms']:.0f}",
        common.percentile_text(row.get("render_response_ms")),
        common.percentile_text(loop["audio_in_to_lips_out_ms"]),
        common.percentile_text(loop.get("audio_in_to_lips_out_conservative_ms")),
        common.percentile_text(loop["av_offset_ms"]),
        common.percentile_text(loop["abs_av_offset_ms"]),
        f"{matched}/{sent}",
        f"{skipped}/{frames}",
        ", ".join(f"{run['correlation_best_lag_ms']:.0f}" for run in runs),
        f"{row['probe_fidelity']:.3f}" if "probe_fidelity" in row else "—",
    ]


def plot(result: dict[str, Any], path: Path) -> None:
    with common.figure(path, 1, 3, figsize=(16, 4.5)) as axes:
        for row in result["rows"]:
            label = f"{row['backend']} C={row['chunk_frames']}"
            stages = row["stages"]["stage_ms_per_chunk"]
            axes[0].barh(
                [f"{label}: {stage}" for stage in STAGES],
                [stages[stage]["p50"] for stage in STAGES],
                height=0.6,
            )
            loop = row.get("loopback")
            if loop:
                runs = loop["runs"]
                common.cdf_plot(axes[1], [v for run in runs for v in run["audio_in_to_lips_out_ms"]], label)
                common.cdf_plot(axes[2], [v for run in runs for v in run["av_offset_ms"]], label)
        axes[0].set(title="stage p50 (ms per chunk)", xlabel="ms")
        axes[0].tick_params(axis="y", labelsize=6)
        axes[1].axvline(TARGET_DELAY_P95_MS, color="grey", linestyle="--", linewidth=1)
        axes[1].set(title="audio-in → lips-out", xlabel="ms", ylabel="fraction of onsets")
        for bound in (-TARGET_AV_P95_MS, TARGET_AV_P95_MS):
            axes[2].axvline(bound, color="grey", linestyle="--", linewidth=1)
        axes[2].set(title="A/V offset (lips − returned audio)", xlabel="ms")
        for axis in axes[1:]:
            if axis.lines:
                axis.legend(fontsize=7)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_avatar_arguments(parser)
    parser.add_argument("--backends", nargs="+", default=["onnxruntime-cpu"])
    parser.add_argument("--chunks", nargs="+", type=int, default=[0], help="chunk sizes (0: the avatar's)")
    parser.add_argument("--timed-chunks", type=int, default=300)
    parser.add_argument("--signals", nargs="+", choices=["bursts", "speech"], default=["bursts", "speech"])
    parser.add_argument("--speech", nargs="+", type=Path, help="recordings for the speech signal")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each signal")
    parser.add_argument("--skip-loopback", action="store_true", help="stage timings only")
    parser.add_argument("--quick", action="store_true", help="few chunks, one short burst signal")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.timed_chunks, args.signals, args.seconds = 8, ["bursts"], 7.0
    if "speech" in args.signals and not args.speech:
        args.speech = sorted(SPEECH.glob("*.wav"))
        if not args.speech:
            print(f"note: no recordings in {SPEECH}; the speech signal is left out", flush=True)
            args.signals = [name for name in args.signals if name != "speech"]
    args.chunks = [chunk or None for chunk in args.chunks]
    avatar = common.bench_avatar(args.avatar)
    rows = measure(args, avatar)
    common.report(
        "latency",
        args,
        markdown,
        plot,
        avatar=str(avatar),
        signals=args.signals,
        speech_files=[path.name for path in args.speech or []],
        seconds_per_signal=args.seconds,
        rows=rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
