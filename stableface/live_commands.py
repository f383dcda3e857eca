"""``stableface serve`` and ``stableface live``: argument parsing and the two handlers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

from engines.errors import InputError
from realtime.settings import PeerTimeouts, ServerSettings, StreamSettings
from stableface.argtypes import default_of, positive_float, positive_int, validated

BACKEND_HELP = "inference backend: auto, onnxruntime-cpu, onnxruntime-cuda, torch-cpu, torch-cuda, tensorrt"
ALLOWANCE_HELP = (
    "time granted to compute a chunk once its audio is in, part of the pipeline delay (default: the "
    "avatar's, 70 ms for `small`); "
    "raise it when the server skips frames (benchmarks/throughput.py shows how much a chunk takes)"
)
NO_AI_MARK_HELP = (
    'leave out the "AI-generated" mark drawn on every frame (keep it wherever viewers could mistake '
    "the avatar for a recording of a real person)"
)
CHUNK_HELP = (
    "frames per renderer call (default: the avatar's); smaller = lower latency, larger = more frames/s"
)


def add_serve_parser(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        epilog="example: stableface serve --avatar my_avatar --port 8080 --token SECRET",
        help="serve avatars live over WebRTC (browser client at /)",
        description="Start the WebRTC avatar server: the browser client at /, POST /offer for SDP "
        "signalling, /healthz and Prometheus /metrics. Each call sends microphone audio and receives the "
        "avatar's lip-synced video and the audio delayed to match.",
    )
    serve.add_argument(
        "--avatar",
        action="append",
        metavar="[NAME=]PATH|default",
        help="an avatar bundle to serve; repeat for several (clients choose by NAME); default: the "
        "bundled default avatar",
    )
    serve.add_argument(
        "--host",
        default=default_of(ServerSettings, "host"),
        help="address to listen on (default %(default)s)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=default_of(ServerSettings, "port"),
        help="port (default %(default)s, 0: any free port)",
    )
    serve.add_argument("--backend", default="auto", help=BACKEND_HELP + " (default auto)")
    serve.add_argument("--chunk", type=positive_int, help=CHUNK_HELP)
    serve.add_argument("--compute-allowance-ms", type=positive_float, help=ALLOWANCE_HELP)
    serve.add_argument("--no-ai-mark", action="store_true", help=NO_AI_MARK_HELP)
    serve.add_argument(
        "--max-sessions",
        type=positive_int,
        default=default_of(ServerSettings, "max_sessions"),
        help="concurrent calls at most, whatever the capacity (default %(default)s)",
    )
    serve.add_argument(
        "--admission",
        choices=("measured", "max-sessions"),
        default=default_of(ServerSettings, "admission"),
        help="measured (default): admit a call only while every call keeps real time by the measured "
        "render cost and the calls' recent repeated frames; max-sessions: up to --max-sessions",
    )
    serve.add_argument(
        "--agent-port",
        type=int,
        metavar="PORT",
        help="answer HAProxy agent checks with this server's headroom on PORT (docs/scale-out.md)",
    )
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a load balancer's address: its X-Forwarded-For names the caller; repeatable",
    )
    serve.add_argument(
        "--load-limit",
        type=float,
        metavar="SHARE",
        help="share of the render device's time calls may take (default 0.45 on a CPU, 0.85 on a GPU)",
    )
    serve.add_argument(
        "--max-batch",
        type=positive_int,
        help="most calls rendered in one batched renderer call (default: --max-sessions; 1: unbatched)",
    )
    serve.add_argument(
        "--render-workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="render worker processes, each with the avatars loaded: one per GPU, or per group of "
        "CPU cores (default 1)",
    )
    serve.add_argument("--token", help="require this bearer token for /offer and /metrics")
    serve.add_argument(
        "--cert", type=Path, help="TLS certificate (PEM); browsers need https beyond localhost"
    )
    serve.add_argument("--key", type=Path, help="TLS private key (PEM)")
    serve.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN/TURN server, e.g. stun:stun.example.org:3478 or turn:USER:SECRET@turn.example.org:3478; "
        "repeatable (default none: host candidates only, fine on a LAN)",
    )
    serve.add_argument(
        "--turn-secret",
        metavar="SECRET",
        help="shared secret of the TURN servers given without USER:SECRET (coturn use-auth-secret): "
        "each caller gets its own credentials, valid for an hour",
    )
    serve.add_argument(
        "--max-session-minutes", type=positive_float, help="end calls after this long (default: no limit)"
    )
    serve.set_defaults(handler=cmd_serve)


def add_live_parser(sub: Any) -> None:
    live = sub.add_parser(
        "live",
        epilog="example: stableface live --avatar default --mic --virtual-camera --virtual-mic",
        help="drive an avatar from a local microphone or a file, to a window, virtual camera or Y4M",
        description="The live pipeline without a browser. Input: a microphone (--mic, PortAudio) or a "
        "speech file played in real time (--audio). Outputs (any number): --window, --virtual-camera, "
        "--virtual-mic (the delayed audio, for the same call app), --y4m PATH or --y4m - (stdout, "
        "e.g. | ffplay -).",
    )
    live.add_argument(
        "--avatar", default="default", metavar="PATH|default", help="avatar bundle (default: the bundled one)"
    )
    source = live.add_mutually_exclusive_group()
    source.add_argument(
        "--mic", metavar="DEVICE", nargs="?", const="", help="microphone (name or index; default device)"
    )
    source.add_argument("--audio", type=Path, metavar="FILE", help="speech file, played in real time")
    live.add_argument(
        "--virtual-camera", nargs="?", const="", metavar="DEVICE", help="send to a virtual camera"
    )
    live.add_argument(
        "--virtual-mic",
        nargs="?",
        const="stableface_mic",
        metavar="NAME",
        help="send the audio, delayed with the lips, to a virtual microphone on the PulseAudio/PipeWire "
        'server ("StableFace microphone"; removed on exit; default name stableface_mic)',
    )
    live.add_argument("--window", action="store_true", help="show in a window (q or Esc quits)")
    live.add_argument("--y4m", metavar="PATH|-", help="write YUV4MPEG2 video to a file or stdout (-)")
    live.add_argument("--backend", default="auto", help=BACKEND_HELP + " (default auto)")
    live.add_argument("--chunk", type=positive_int, help=CHUNK_HELP)
    live.add_argument("--compute-allowance-ms", type=positive_float, help=ALLOWANCE_HELP)
    live.add_argument("--no-ai-mark", action="store_true", help=NO_AI_MARK_HELP)
    live.add_argument("--seconds", type=positive_float, help="stop after this long")
    live.set_defaults(handler=cmd_live)


def stream_settings(args: argparse.Namespace) -> StreamSettings:
    """``--chunk``, ``--compute-allowance-ms`` and ``--no-ai-mark`` as stream settings (unset ones
    keep their defaults)."""
    given = {"chunk_frames": args.chunk, "compute_allowance_ms": args.compute_allowance_ms}
    chosen = {key: value for key, value in given.items() if value is not None}
    return StreamSettings(**chosen, ai_mark=not args.no_ai_mark)


def cmd_serve(args: argparse.Namespace) -> int:
    from realtime.server import AvatarServer, tls_context
    from realtime.worker_pool import RenderPool

    settings = validated(  # before any model is loaded
        ServerSettings,
        {
            "ice_servers": "--ice-server",
            "turn_secret": "--turn-secret",
            "load_limit": "--load-limit",
            "cert_file": "--cert",
            "key_file": "--key",
        },
        host=args.host,
        port=args.port,
        max_sessions=args.max_sessions,
        token=args.token,
        ice_servers=tuple(args.ice_server),
        turn_secret=args.turn_secret,
        admission=args.admission,
        agent_port=args.agent_port,
        trusted_proxies=tuple(args.trusted_proxy),
        load_limit=args.load_limit,
        cert_file=args.cert,
        key_file=args.key,
        timeouts=PeerTimeouts(max_session_s=60 * (args.max_session_minutes or 0)),
    )
    tls_context(settings)  # a bad certificate is reported before the render workers start
    pool = RenderPool.start(
        args.avatar or ["default"],
        args.backend,
        stream_settings(args),
        args.max_batch or settings.max_sessions,
        measure=settings.admission == "measured",
        workers=args.render_workers,
    )
    try:
        server = AvatarServer(pool, settings)

        def ready(url: str) -> None:
            avatars = ", ".join(
                f"{a['name']} ({a['backend']}, {a['latency_ms']:.0f} ms)" for a in pool.describe()
            )
            workers = f"{len(pool.workers)} render worker{'s' if len(pool.workers) > 1 else ''}"
            print(f"stableface serve: {url}  avatars: {avatars}, {workers}  (Ctrl-C stops)", flush=True)

        asyncio.run(server.serve_until_stopped(ready))
    finally:
        pool.close()
    print("stableface serve: stopped", flush=True)
    return 0


def cmd_live(args: argparse.Namespace) -> int:
    from realtime.live import load_speech
    from realtime.sinks import AudioSink

    if not (args.window or args.y4m or args.virtual_camera is not None or args.virtual_mic is not None):
        raise InputError(
            "choose at least one output: --window, --virtual-camera, --virtual-mic or --y4m PATH|-"
        )
    audio = load_speech(args.audio) if args.audio is not None else None
    with contextlib.ExitStack() as outputs:
        audio_sinks: list[AudioSink] = []
        if args.virtual_mic is not None:
            from realtime.virtual_mic import PulseVirtualMicrophone

            audio_sinks.append(outputs.enter_context(PulseVirtualMicrophone(args.virtual_mic)))
        return _live_with(args, audio, audio_sinks)


def _live_with(args: argparse.Namespace, audio: Any, audio_sinks: list[Any]) -> int:
    from realtime.avatars import AvatarSpec
    from realtime.engine import AvatarEngine
    from realtime.live import push_microphone, push_samples, run_live
    from realtime.sinks import FrameSink, VirtualCameraSink, WindowSink, Y4MSink

    sinks: list[FrameSink] = []
    if args.virtual_camera is not None:
        sinks.append(VirtualCameraSink(args.virtual_camera or None))
    if args.window:
        sinks.append(WindowSink())
    if args.y4m:
        sinks.append(Y4MSink(args.y4m))
    settings = stream_settings(args)
    if audio_sinks:
        # The audio lead makes up for a WebRTC receiver's buffer; a virtual camera shows each frame
        # at once and the virtual microphone plays its audio at once, so here audio and frame
        # leave together.
        settings = settings.model_copy(update={"audio_lead_ms": 0.0})
    engine = AvatarEngine.load(AvatarSpec.parse(args.avatar).path, args.backend, settings)
    try:
        if audio is not None:

            async def feed(session: Any) -> None:
                await push_samples(session, audio)
        else:

            async def feed(session: Any) -> None:
                await push_microphone(session, args.mic or None)

        report = asyncio.run(run_live(engine, sinks, feed, args.seconds, audio_sinks))
    finally:
        engine.close()
    logging.getLogger(__name__).info("live ended: %s", report.ended_by)
    print(
        f"stableface live: {report.frames} frames ({report.skipped} repeated), latency "
        f"{report.latency_ms:.0f} ms, ended: {report.ended_by}",
        file=sys.stderr,
    )
    return 0
