"""Real WebRTC calls on one server: how many output slots repeat an earlier image as calls are added.

For each call count N: ``stableface serve`` runs in its own process on 127.0.0.1 (the avatar, the
backend and ``--max-sessions`` N, so the render scheduler may batch all N); one caller process
holds N aiortc calls, each sending its own generated speech (48 kHz Opus, as a browser does) and
decoding what comes back, for ``--seconds``. The server's own counters, read from ``/metrics``
before and after, give the share of output slots that repeated an earlier image (a frame not
rendered in time: ``stableface_frames_skipped`` over ``stableface_frames_sent``) — the measure of
real time that matters, since every caller receives 25 frames/s either way. Callers run on the same
machine as the server, so they take CPU from it (as in the measurements this replaces).

Writes ``results/calls-<date>.json`` and ``.md``.

    python benchmarks/calls.py [--avatar PATH] [--backend onnxruntime-cpu] [--calls 1 2 3 4 5]
        [--seconds 20] [--unbatched] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from offline_training.synthetic.speech import synthesize_speech
from realtime.client import ArrayAudioTrack, AvatarClient
from realtime.serve_process import serve_in_process
from stableface.argtypes import avatar_folder

COUNTERS = ("stableface_frames_sent_total", "stableface_frames_skipped_total")


def read_counters(url: str) -> dict[str, float]:
    """The server's frame counters from ``/metrics``."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for name in COUNTERS:
        match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
        values[name] = float(match.group(1)) if match else 0.0
    return values


async def run_calls(url: str, count: int, seconds: float) -> list[dict[str, Any]]:
    """``count`` concurrent calls for ``seconds``; frames each received and its state at the end."""
    clients = []
    for index in range(count):
        audio = synthesize_speech(200 + index, seconds + 5).audio
        client = AvatarClient(url, ArrayAudioTrack(audio, 16_000), keep_images=False, prompt_buffers=False)
        await client.connect()
        clients.append(client)
    await asyncio.sleep(seconds)
    report = [
        {"state": client.pc.connectionState, "frames_per_s": client.frames_received / seconds}
        for client in clients
    ]
    for client in clients:
        await client.close()
    return report


def measure(args: argparse.Namespace, avatar: Path) -> list[dict[str, Any]]:
    rows = []
    for count in args.calls:
        arguments = ["--avatar", f"bench={avatar}", "--backend", args.backend]
        arguments += ["--max-sessions", str(count), "--admission", "max-sessions"]  # overload on purpose
        if args.unbatched:
            arguments += ["--max-batch", "1"]
        with serve_in_process(arguments) as server:
            before = read_counters(server.url)
            calls = asyncio.run(run_calls(server.url, count, args.seconds))
            after = read_counters(server.url)
        sent = after[COUNTERS[0]] - before[COUNTERS[0]]
        skipped = after[COUNTERS[1]] - before[COUNTERS[1]]
        row = {
            "calls": count,
            "frames_sent": sent,
            "frames_repeated": skipped,
            "repeated_fraction": skipped / sent if sent else None,
            "received_frames_per_s": [round(call["frames_per_s"], 2) for call in calls],
            "states": [call["state"] for call in calls],
        }
        rows.append(row)
        print(
            f"{count} call(s): {100 * (row['repeated_fraction'] or 0):.1f}% of {sent:.0f} output slots "
            f"repeated, received {row['received_frames_per_s']} frames/s",
            flush=True,
        )
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# calls — {result['date']}",
        "",
        f"{common.machine_line(result)}. Avatar `{result['avatar']}`, backend `{result['backend']}`, "
        f"{'one session per renderer call' if result['unbatched'] else 'batched renderer calls'}; "
        f"{result['seconds']:.0f} s of calls per step, callers on the same machine.",
        "",
    ]
    cells = [
        [
            row["calls"],
            f"{row['frames_sent']:.0f}",
            f"{100 * (row['repeated_fraction'] or 0):.1f}%",
            ", ".join(f"{value:.1f}" for value in row["received_frames_per_s"]),
        ]
        for row in result["rows"]
    ]
    columns = ["calls", "output slots", "repeated an earlier image", "frames/s received per call"]
    return "\n".join(lines + common.markdown_table(columns, "rrrl", cells)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--avatar", type=avatar_folder, help="avatar bundle, or default (the bundled one; the default)"
    )
    parser.add_argument("--backend", default="onnxruntime-cpu")
    parser.add_argument("--calls", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--unbatched", action="store_true", help="one session per renderer call")
    parser.add_argument("--quick", action="store_true", help="one call for 3 s")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.seconds = [1], 3.0
    avatar = common.bench_avatar(args.avatar)
    rows = measure(args, avatar)
    common.report(
        "calls",
        args,
        markdown,
        None,
        avatar=str(avatar),
        backend=args.backend,
        unbatched=args.unbatched,
        seconds=args.seconds,
        rows=rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_script(main))
