"""A pipecat pipeline with the avatar as its video service, called over WebRTC on loopback.

The pipecat demo server (``realtime/pipecat_demo.py``, pipecat's small WebRTC transport) runs in
this process; an aiortc caller (``realtime.client``) calls it ``--runs`` times. Each call is one of
two bots: ``echo`` (the caller sends generated speech bursts with sharp onsets and the bot's voice
is that microphone, the ``InputAudioRawFrame`` path) or ``tts`` (the bot queues the same bursts as
``TTSAudioRawFrame``s all at once, as a TTS service does, faster than real time). Measured from what
the caller received, on one clock: frames per second, and lip sync as the caller sees and hears
it — the lag that best lines the mouth (``realtime.mouth_probe``) up with the received loudness and
that correlation (no thresholds), plus the onset-matched A/V offsets of ``lip_timing.analyse``
(lips-out minus sound-out) for the echo calls.

Writes ``results/pipecat_call-<date>[-<label>].json`` and ``.md``.

    python benchmarks/pipecat_call.py [--avatar PATH] [--backend auto] [--runs 3] [--seconds 12]
        [--label NAME] [--quick]
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

from aiohttp import web
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack

from benchmarks import common
from benchmarks.lip_timing import analyse, lips_after_sound_ms, received_loudness
from benchmarks.signals import TestSignal, bursts
from engines.timebase import FPS
from offline_training.synthetic.speech import synthesize_speech
from realtime.client import ArrayAudioTrack, AvatarClient, ClientRecording
from realtime.engine import AvatarEngine
from realtime.mouth_probe import MouthProbe
from realtime.pipecat_avatar import StableFaceVideoService, load_avatar_engine
from realtime.pipecat_demo import BotScript, PipecatDemo, tts_frames
from stableface.pipecat_command import quiet_pipecat_logs

CALIBRATION_SEED = 101
TAIL_S = 1.0  # recorded after the signal ends
SKIP_S = 0.5  # the first half second of a call is left out of the frame count


async def call_demo(
    engine: AvatarEngine, script: BotScript | None, microphone: MediaStreamTrack, seconds: float
) -> ClientRecording:
    """One call to a demo server in this process (``script`` None: the echo bot) for ``seconds``;
    what the caller received. The call's pipeline must have ended with the server."""
    demo = PipecatDemo(engine, script)
    runner = web.AppRunner(demo.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    client = AvatarClient(f"http://127.0.0.1:{runner.addresses[0][1]}", microphone, offer_path="api/offer")
    try:
        await client.connect()
        await asyncio.sleep(seconds)
    finally:
        await client.close()
        await runner.cleanup()
    if demo.calls:
        raise RuntimeError("a call's pipeline outlived the demo server")
    return client.recording


def measure_call(engine: AvatarEngine, probe: MouthProbe, bot: str, signal: TestSignal) -> dict[str, Any]:
    """One call; the frames and lip sync the caller got."""
    started: list[float] = []
    if bot == "echo":
        microphone: MediaStreamTrack = ArrayAudioTrack(signal.audio, 16_000)
        script = None
    else:
        microphone = AudioStreamTrack()

        async def script(task: Any, _service: StableFaceVideoService) -> None:
            await asyncio.sleep(0.5)
            started.append(time.monotonic())
            await task.queue_frames(tts_frames(signal.audio))

    recording = asyncio.run(call_demo(engine, script, microphone, 1.0 + signal.duration_s + TAIL_S))
    if bot == "echo":
        assert isinstance(microphone, ArrayAudioTrack) and microphone.started is not None
        started.append(microphone.started)
    start = started[0]
    arrivals = np.array([frame.arrival_s for frame in recording.video])
    scores = np.array([probe.score(frame.image) for frame in recording.video])
    window = (arrivals >= start + SKIP_S) & (arrivals < start + signal.duration_s)
    grid, loudness = received_loudness(recording)
    lag_ms, corr = lips_after_sound_ms(arrivals[window], scores[window], grid, loudness)
    onsets = analyse(signal, recording, start, probe)
    return {
        "bot": bot,
        "frames_received": int(window.sum()),
        "frames_expected": int((signal.duration_s - SKIP_S) * FPS),
        "lips_after_sound_ms": lag_ms,
        "correlation": corr,
        "av_offset_ms": onsets["av_offset_ms"],
        "audio_in_to_lips_out_ms": onsets["audio_in_to_lips_out_ms"],
        "onsets_matched": onsets["onsets_matched"],
        "onsets_sent": onsets["onsets_sent"],
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# pipecat call — {result['date']}",
        "",
        common.machine_line(result),
        f"Avatar {result['avatar']}, backend {result['backend']}, pipecat-ai {result['pipecat']}; "
        f"{result['seconds']:.0f} s of speech bursts a call.",
        "",
    ]
    rows = []
    for row in result["calls"]:
        fps = row["frames_received"] / row["frames_expected"] * FPS
        rows.append(
            [
                row["bot"],
                f"{fps:.1f}",
                f"{row['lips_after_sound_ms']:+.0f}",
                f"{row['correlation']:.2f}",
                f"{row['onsets_matched']}/{row['onsets_sent']}",
                " ".join(f"{v:+.0f}" for v in row["av_offset_ms"]) or "—",
            ]
        )
    lines += common.markdown_table(
        [
            "bot",
            "frames/s received",
            "lips after sound (ms)",
            "correlation",
            "onsets matched",
            "A/V offsets (ms)",
        ],
        "lrrrrl",
        rows,
    )
    offsets = [value for row in result["calls"] for value in row["av_offset_ms"]]
    lags = [row["lips_after_sound_ms"] for row in result["calls"]]
    lines += [
        "",
        f"Lips after sound over all calls: {common.percentile_text(common.percentiles(lags))} ms "
        f"(p50 / p95 / p99); onset-matched A/V offsets ({len(offsets)}): "
        f"{common.percentile_text(common.percentiles(offsets) if offsets else None)} ms.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_avatar_arguments(parser)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--runs", type=int, default=3, help="calls of each bot")
    parser.add_argument("--seconds", type=float, default=12.0, help="speech a call")
    parser.add_argument("--quick", action="store_true", help="one call of each bot, 5 s")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    from importlib.metadata import version

    quiet_pipecat_logs(verbose=False)
    runs, seconds = (1, 5.0) if args.quick else (args.runs, args.seconds)
    avatar = common.bench_avatar(args.avatar)
    engine = load_avatar_engine(avatar, args.backend)
    try:
        probe = MouthProbe.calibrate(engine, synthesize_speech(CALIBRATION_SEED, 8.0).audio)
        calls = []
        for run in range(runs):
            for bot in ("echo", "tts"):
                signal = bursts(seed=10 + run, seconds=seconds)
                calls.append(measure_call(engine, probe, bot, signal))
        backend = engine.backend.name
    finally:
        engine.close()
    common.report(
        "pipecat_call",
        args,
        markdown,
        avatar=str(avatar.name),
        backend=backend,
        pipecat=version("pipecat-ai"),
        seconds=seconds,
        calls=calls,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
