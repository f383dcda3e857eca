"""A process of aiortc callers for the load test: ``python load_caller.py CALLS SECONDS SEED``, then
the server's URL as one line on stdin (so the process can start while the server does).

Real callers are separate machines; one Python process decoding every call's media would itself be
the bottleneck (its event loop handles every datagram), so the load test spreads its callers over a
few of these. Prints one JSON line: per call the connection state at the end, frames received and
frames received in the last 5 s.
"""

from __future__ import annotations

import asyncio
import json
import sys

from speech_signals import speech_with_pauses

from realtime.client import ArrayAudioTrack, AvatarClient


async def main(url: str, calls: int, seconds: float, seed: int) -> None:
    clients = []
    for index in range(calls):
        audio, _ = speech_with_pauses(seed + index, [("speech", 2.0), ("silence", 1.0)] * 3)
        # The load test is about the server: callers keep aiortc's own receive buffering.
        client = AvatarClient(url, ArrayAudioTrack(audio, 16_000), keep_images=False, prompt_buffers=False)
        await client.connect()
        clients.append(client)
    await asyncio.sleep(seconds)
    report = []
    for client in clients:
        video = client.recording.video
        end = video[-1].arrival_s if video else 0.0
        report.append(
            {
                "state": client.pc.connectionState,
                "frames": client.frames_received,
                "last_5s": sum(1 for v in video if v.arrival_s > end - 5),
            }
        )
    print(json.dumps(report), flush=True)
    await asyncio.gather(*(client.close() for client in clients))


if __name__ == "__main__":
    server_url = sys.stdin.readline().strip()
    asyncio.run(main(server_url, int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])))
