"""A LiveKit SDK participant for multi-DC tests, run inside a DC's namespace.

    python lab_client.py URL TOKEN --duration S [--publish] [--watch] [--out FILE] [--size WxH]

Publishes synthetic video + audio (--publish) and/or records, per remote participant, when its
tracks were subscribed and the wall-clock arrival of every decoded video frame (--watch). All
times are `time.time()`: namespaces share the kernel's clock, so the test can line them up
with the cuts it makes. Writes one JSON document to --out (or stdout) when done.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))


async def run(args: argparse.Namespace) -> dict[str, object]:
    from livekit import rtc
    from sdk_helpers import publish_synthetic  # type: ignore[import-not-found]

    room = rtc.Room()
    report: dict[str, object] = {"connected_at": None, "published_at": None, "subscribed": {}, "frames": {},
                                 "audio_frames": {}, "audio_times": {}, "disconnects": []}
    subscribed: dict[str, float] = report["subscribed"]  # type: ignore[assignment]
    frames: dict[str, list[float]] = report["frames"]  # type: ignore[assignment]
    audio: dict[str, int] = report["audio_frames"]  # type: ignore[assignment]
    audio_times: dict[str, list[float]] = report["audio_times"]  # type: ignore[assignment]
    tasks: list[asyncio.Task[None]] = []

    async def read_video(track: rtc.Track, who: str) -> None:
        times = frames.setdefault(who, [])
        async for _ in rtc.VideoStream(track):
            times.append(time.time())

    async def read_audio(track: rtc.Track, who: str) -> None:
        audio.setdefault(who, 0)
        times = audio_times.setdefault(who, [])
        async for _ in rtc.AudioStream(track):
            audio[who] += 1
            if audio[who] % 5 == 0:  # every 50 ms of audio is enough to see a gap
                times.append(time.time())

    @room.on("track_subscribed")
    def on_track(track: rtc.Track, publication: rtc.RemoteTrackPublication,
                 participant: rtc.RemoteParticipant) -> None:
        kind = "video" if track.kind == rtc.TrackKind.KIND_VIDEO else "audio"
        subscribed[f"{participant.identity}/{kind}"] = time.time()
        if args.watch:
            reader = read_video if kind == "video" else read_audio
            tasks.append(asyncio.ensure_future(reader(track, participant.identity)))

    room.on("disconnected", lambda reason=None: report["disconnects"].append(  # type: ignore[union-attr]
        [time.time(), str(reason)]))
    await room.connect(args.url, args.token)
    report["connected_at"] = time.time()
    publisher = None
    if args.publish:
        width, height = (int(v) for v in args.size.split("x"))
        publisher = await publish_synthetic(room, width=width, height=height)
        report["published_at"] = time.time()
    await asyncio.sleep(args.duration)
    if publisher is not None:
        await publisher.stop()
    for task in tasks:
        task.cancel()
    await room.disconnect()
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--publish", action="store_true")
    parser.add_argument("--watch", action="store_true")
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--out")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    text = json.dumps(report)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, flush=True)


if __name__ == "__main__":
    main()
