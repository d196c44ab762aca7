"""Run inside a DC namespace: one LiveKit SDK participant publishes a tone, another in the same
room waits for its audio frames. Prints one JSON line and exits 0 when audio arrived.

    python lab_sdk_probe.py URL PUBLISHER_TOKEN SUBSCRIBER_TOKEN [TIMEOUT_S]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))


async def probe(url: str, publisher_token: str, subscriber_token: str, timeout: float) -> dict[str, object]:
    from livekit import rtc
    from sdk_helpers import publish_synthetic  # type: ignore[import-not-found]

    publisher, subscriber = rtc.Room(), rtc.Room()
    frames = 0
    got_audio = asyncio.Event()

    async def count(track: rtc.Track) -> None:
        nonlocal frames
        async for _ in rtc.AudioStream(track):
            frames += 1
            if frames >= 50:  # half a second of audio
                got_audio.set()

    tasks: list[asyncio.Task[None]] = []

    @subscriber.on("track_subscribed")
    def _on_track(track: rtc.Track, *_: object) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            tasks.append(asyncio.ensure_future(count(track)))

    started = time.monotonic()
    await subscriber.connect(url, subscriber_token)
    await publisher.connect(url, publisher_token)
    published = await publish_synthetic(publisher, video=False)
    try:
        await asyncio.wait_for(got_audio.wait(), timeout)
        result: dict[str, object] = {"ok": True, "frames": frames, "seconds": round(time.monotonic() - started, 2)}
    except TimeoutError:
        result = {"ok": False, "frames": frames, "seconds": round(time.monotonic() - started, 2)}
    for task in [*tasks, *published.tasks]:
        task.cancel()
    await publisher.disconnect()
    await subscriber.disconnect()
    return result


def main() -> int:
    url, publisher_token, subscriber_token = sys.argv[1:4]
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 20.0
    result = asyncio.run(probe(url, publisher_token, subscriber_token, timeout))
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
