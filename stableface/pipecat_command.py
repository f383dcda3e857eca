"""``stableface pipecat-demo``: a pipecat bot with the avatar's face, callable from a browser."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from engines.errors import MissingDependencyError
from stableface.argtypes import avatar_folder
from stableface.live_commands import BACKEND_HELP, NO_AI_MARK_HELP, stream_settings

PIPECAT_HINT = "pip install -e .[pipecat]"


def add_pipecat_demo_parser(sub: Any) -> None:
    demo = sub.add_parser(
        "pipecat-demo",
        epilog="example: stableface pipecat-demo --say greeting.wav --port 8090",
        help="a pipecat voice bot with the avatar as its face, on pipecat's small WebRTC transport",
        description="Serve a pipecat pipeline (transport input -> bot voice -> StableFace video service -> "
        "transport output) and a page at / that calls it from a browser. The bot's voice repeats the "
        "caller's microphone, or with --say speaks a file once the call is up. Needs the pipecat extra "
        f"({PIPECAT_HINT}).",
    )
    demo.add_argument(
        "--avatar", type=avatar_folder, default="default", metavar="PATH|default", help="avatar bundle"
    )
    demo.add_argument("--say", type=Path, metavar="FILE", help="speech file the bot says when a call starts")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    demo.add_argument("--port", type=int, default=8090, help="port (default %(default)s)")
    demo.add_argument("--backend", default="auto", help=BACKEND_HELP + " (default auto)")
    demo.add_argument("--no-ai-mark", action="store_true", help=NO_AI_MARK_HELP)
    demo.set_defaults(handler=cmd_pipecat_demo, chunk=None, compute_allowance_ms=None)


def quiet_pipecat_logs(verbose: bool) -> None:
    """pipecat logs through loguru at DEBUG to stderr; keep warnings only (all with --verbose)."""
    import sys

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if verbose else "WARNING")


def cmd_pipecat_demo(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("pipecat") is None:
        raise MissingDependencyError(f"pipecat-demo needs pipecat-ai: {PIPECAT_HINT}")
    quiet_pipecat_logs(verbose=args.verbose)
    from realtime.pipecat_avatar import load_avatar_engine
    from realtime.pipecat_demo import read_speech, run_demo, say

    script = say(read_speech(args.say)) if args.say is not None else None
    engine = load_avatar_engine(args.avatar, args.backend, stream_settings(args))
    try:
        print(f"pipecat bot on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
        run_demo(engine, args.host, args.port, script)
    finally:
        engine.close()
    return 0
