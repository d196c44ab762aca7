"""A subscriber for the bandwidth test, run inside a network namespace:

    python bwe_subscriber_proc.py URL TOKEN

Joins, subscribes to every track, and prints one line per decoded video frame:
`F <monotonic seconds> <width> <height>` (flushed), after a first `READY` line. Errors are
printed as `ERROR ...` and the process exits 1.
"""

from __future__ import annotations

import asyncio
import sys
import time
import traceback


async def run(url: str, token: str) -> None:
    from livekit import rtc

    room = rtc.Room()
    tasks: list[asyncio.Task[None]] = []

    async def read(track: rtc.RemoteVideoTrack) -> None:
        async for event in rtc.VideoStream(track):
            print(f"F {time.monotonic():.3f} {event.frame.width} {event.frame.height}", flush=True)

    @room.on("track_subscribed")
    def on_subscribed(track: rtc.Track, *_: object) -> None:
        if isinstance(track, rtc.RemoteVideoTrack):
            tasks.append(asyncio.ensure_future(read(track)))

    await room.connect(url, token)
    print("READY", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    try:
        asyncio.run(run(sys.argv[1], sys.argv[2]))
    except Exception:
        print("ERROR " + traceback.format_exc().replace("\n", " | "), flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
