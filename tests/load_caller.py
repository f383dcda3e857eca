"""A process of aiortc callers for the load test: ``python load_caller.py CALLS SECONDS SEED``, then
the server's URL as one line on stdin (so the process can start while the server does).

Real callers are separate machines; one Python process decoding every call's media would itself be
the bottleneck (its event loop handles every datagram), so the load test spreads its callers over a
few of these. Its calls are offered at once. Prints one JSON line: per call the connection state
at the end, frames received, frames received in the last 5 s and seconds of audio received — or,
for a call the server refused, its status and reason.
"""

from __future__ import annotations

import asyncio
import json
import sys

from speech_signals import speech_with_pauses

from realtime.client import ArrayAudioTrack, AvatarClient, OfferRefused


async def _call(url: str, seed: int) -> AvatarClient | dict[str, object]:
    audio, _ = speech_with_pauses(seed, [("speech", 2.0), ("silence", 1.0)] * 3)
    # The load test is about the server: callers keep aiortc's own receive buffering. Each call
    # comes from its own address, as callers on separate machines do.
    client = AvatarClient(
        url,
        ArrayAudioTrack(audio, 16_000),
        keep_images=False,
        prompt_buffers=False,
        source_address=f"127.0.0.{2 + seed % 250}",
    )
    try:
        await client.connect()
    except OfferRefused as refused:
        await client.close()
        return {"state": "refused", "status": refused.status, "error": refused.body.get("error")}
    return client


async def main(url: str, calls: int, seconds: float, seed: int) -> None:
    outcomes = await asyncio.gather(*(_call(url, seed + index) for index in range(calls)))
    await asyncio.sleep(seconds)
    report = []
    for outcome in outcomes:
        if not isinstance(outcome, AvatarClient):
            report.append(outcome)
            continue
        video = outcome.recording.video
        end = video[-1].arrival_s if video else 0.0
        report.append(
            {
                "state": outcome.pc.connectionState,
                "frames": outcome.frames_received,
                "last_5s": sum(1 for v in video if v.arrival_s > end - 5),
                "audio_s": sum(len(samples) for _, samples in outcome.recording.audio)
                / outcome.recording.audio_rate_hz,
            }
        )
    print(json.dumps(report), flush=True)
    await asyncio.gather(*(o.close() for o in outcomes if isinstance(o, AvatarClient)))


if __name__ == "__main__":
    server_url = sys.stdin.readline().strip()
    asyncio.run(main(server_url, int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])))
