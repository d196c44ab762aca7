"""A LiveKit SDK participant for multi-DC tests, run inside a DC's namespace.

    python lab_client.py URL TOKEN [TOKEN...] --duration S [--publish] [--watch] [--out FILE] [--size WxH]

Publishes synthetic video + audio (--publish) and/or records, per remote participant, when its
tracks were subscribed and the wall-clock arrival of every decoded video frame (--watch). All
times are `time.time()`: namespaces share the kernel's clock, so the test can line them up
with the cuts it makes. Several tokens: several participants in this one process (cheaper than
one process each). Progress goes to stdout as JSON lines ({"event": "subscribed", ...}) so a
test can wait for it; SIGTERM ends the run early. Writes one JSON document to --out (or
stdout) when done: {"participants": {identity: report}}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def run(args: argparse.Namespace, token: str, stop: asyncio.Event) -> dict[str, object]:
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
        say(event="subscribed", identity=room.local_participant.identity, track=f"{participant.identity}/{kind}")
        if args.watch:
            reader = read_video if kind == "video" else read_audio
            tasks.append(asyncio.ensure_future(reader(track, participant.identity)))

    room.on("disconnected", lambda reason=None: report["disconnects"].append(  # type: ignore[union-attr]
        [time.time(), str(reason)]))
    await room.connect(args.url, token)
    report["connected_at"] = time.time()
    say(event="connected", identity=room.local_participant.identity)
    publisher = None
    if args.publish:
        width, height = (int(v) for v in args.size.split("x"))
        publisher = await publish_synthetic(room, width=width, height=height)
        report["published_at"] = time.time()
        say(event="published", identity=room.local_participant.identity)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), args.duration)
    if publisher is not None:
        await publisher.stop()
    for task in tasks:
        task.cancel()
    await room.disconnect()
    return report


async def run_all(args: argparse.Namespace) -> dict[str, object]:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    reports = await asyncio.gather(*(run(args, token, stop) for token in args.tokens))
    return {"participants": {identity_of(token): report for token, report in zip(args.tokens, reports, strict=True)}}


def identity_of(token: str) -> str:
    import base64

    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["sub"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("tokens", nargs="+")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--publish", action="store_true")
    parser.add_argument("--watch", action="store_true")
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--out")
    args = parser.parse_args()
    report = asyncio.run(run_all(args))
    text = json.dumps(report)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, flush=True)


if __name__ == "__main__":
    main()
