"""Helpers to drive the official Python `livekit` SDK in tests: synthetic publishers and
receivers that count what they decode."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field

import numpy as np
from livekit import rtc


@dataclass
class Received:
    video_frames: int = 0
    video_sizes: list[tuple[int, int]] = field(default_factory=list)
    audio_frames: int = 0
    audio_peak: int = 0
    video_times: list[float] = field(default_factory=list)  # time.monotonic() of every decoded frame
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def size(self) -> tuple[int, int] | None:
        return self.video_sizes[-1] if self.video_sizes else None

    def longest_video_gap(self, start: float, end: float | None = None) -> float:
        return longest_gap(self.video_times, start, time.monotonic() if end is None else end)


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] without an event (the window's edges count)."""
    points = [start, *(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(points))


def count_media(room: rtc.Room, received: Received, audio: bool = True) -> None:
    """Counts decoded frames of every track the room subscribes to (video only without `audio`)."""

    async def read_video(track: rtc.RemoteVideoTrack) -> None:
        async for event in rtc.VideoStream(track):
            received.video_frames += 1
            received.video_times.append(time.monotonic())
            size = (event.frame.width, event.frame.height)
            if not received.video_sizes or received.video_sizes[-1] != size:
                received.video_sizes.append(size)

    async def read_audio(track: rtc.RemoteAudioTrack) -> None:
        async for event in rtc.AudioStream(track):
            received.audio_frames += 1
            samples = np.frombuffer(event.frame.data, dtype=np.int16)
            if samples.size:
                received.audio_peak = max(received.audio_peak, int(np.abs(samples).max()))

    @room.on("track_subscribed")
    def on_subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication,
                      participant: rtc.RemoteParticipant) -> None:
        if isinstance(track, rtc.RemoteVideoTrack):
            received.tasks.append(asyncio.ensure_future(read_video(track)))
        elif audio and isinstance(track, rtc.RemoteAudioTrack):
            received.tasks.append(asyncio.ensure_future(read_audio(track)))


@dataclass
class SyntheticPublisher:
    video: rtc.LocalVideoTrack | None = None
    audio: rtc.LocalAudioTrack | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def publish_synthetic(room: rtc.Room, width: int = 1280, height: int = 720, audio: bool = True,
                            video: bool = True, simulcast: bool = True) -> SyntheticPublisher:
    publisher = SyntheticPublisher()
    if video:
        source = rtc.VideoSource(width, height)
        publisher.video = rtc.LocalVideoTrack.create_video_track("camera", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=simulcast)
        await room.local_participant.publish_track(publisher.video, options)

        async def frames() -> None:
            index = 0
            base = np.zeros((height, width, 4), dtype=np.uint8)
            while True:
                frame = base.copy()
                x = (index * 16) % max(1, width - 64)
                frame[:, x:x + 64] = (255, 255, 255, 255)
                frame[:, :, 1] = (index * 4) % 255
                source.capture_frame(rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, frame.tobytes()))
                index += 1
                await asyncio.sleep(1 / 30)

        publisher.tasks.append(asyncio.ensure_future(frames()))
    if audio:
        audio_source = rtc.AudioSource(48000, 1)
        publisher.audio = rtc.LocalAudioTrack.create_audio_track("microphone", audio_source)
        await room.local_participant.publish_track(
            publisher.audio, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))

        # 440 Hz fits 22 whole periods into five 10 ms frames: computed once, the loop only slices.
        # (Twenty publishers in one process would otherwise spend a core on numpy alone.)
        t = np.arange(5 * 480)
        wave = (np.sin(2 * np.pi * 440 * t / 48000) * 12000).astype(np.int16).tobytes()
        chunks = [wave[i * 960:(i + 1) * 960] for i in range(5)]

        async def tone() -> None:
            index = 0
            while True:
                await audio_source.capture_frame(rtc.AudioFrame(chunks[index % 5], 48000, 1, 480))
                index += 1

        publisher.tasks.append(asyncio.ensure_future(tone()))
    return publisher


def record_connection_events(rooms: dict[str, rtc.Room]) -> dict[str, list[str]]:
    """Each room's reconnecting / reconnected / disconnected events, in order, by name."""
    events: dict[str, list[str]] = {name: [] for name in rooms}
    for name, room in rooms.items():
        for kind in ("reconnecting", "reconnected", "disconnected"):
            room.on(kind, lambda *_, name=name, kind=kind: events[name].append(kind))
    return events


class ReliableDataLoop:
    """Numbered reliable messages from `room` every `interval` until stopped; `sent` keeps
    them in order, to hold against what a receiver got (`delivery_problem`)."""

    def __init__(self, room: rtc.Room, topic: str, interval: float = 0.05) -> None:
        self.sent: list[bytes] = []
        self._stopping = asyncio.Event()
        self._task = asyncio.ensure_future(self._run(room, topic, interval))

    async def _run(self, room: rtc.Room, topic: str, interval: float) -> None:
        index = 0
        while not self._stopping.is_set():
            payload = f"msg-{index}".encode()
            await room.local_participant.publish_data(payload, reliable=True, topic=topic)
            self.sent.append(payload)
            index += 1
            await asyncio.sleep(interval)

    async def stop(self, timeout: float = 10) -> None:
        """Ends after the message being sent, if any (so `sent` holds only what was published)."""
        self._stopping.set()
        await asyncio.wait_for(self._task, timeout)

    def cancel(self) -> None:
        self._task.cancel()


def delivery_problem(sent: list[bytes], received: list[bytes]) -> str | None:
    """What is wrong with a reliable delivery that should be each message once, in order."""
    if duplicates := sorted({m for m in received if received.count(m) > 1}):
        return f"data delivered twice: {duplicates[:5]}"
    got = set(received)
    if missing := [m for m in sent if m not in got]:
        return f"{len(missing)} data packets lost, e.g. {missing[:5]}"
    if received != sent:
        return "data reordered (or received but never sent)"
    return None


async def wait_for(predicate: object, timeout: float, interval: float = 0.05) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(interval)
    return bool(predicate())  # type: ignore[operator]


def dev_nats_url(dev_log: str) -> str:
    """The embedded NATS URL from the `meshrtc dev` banner (`  NATS:       nats://127.0.0.1:PORT`)."""
    import re

    match = re.search(r"^\s*NATS:\s+(nats://\S+)", dev_log, re.MULTILINE)
    if match is None:
        raise AssertionError("no NATS line in the meshrtc dev banner")
    return match.group(1)


async def media_node_stats(nats_url: str, node_id: str = "media-dc1-1") -> dict[str, object]:
    """`ctl.media.<node>.stats` answered by the media node: rooms, sessions, tracks, asyncio_tasks,
    open_peers, rss_bytes (shared.contracts.control.NodeStats), as a plain dict."""
    import json

    import nats

    nc = await nats.connect(nats_url, allow_reconnect=False)
    try:
        reply = await nc.request(f"ctl.media.{node_id}.stats", b"", timeout=2)
    finally:
        await nc.close()
    return json.loads(reply.data)  # type: ignore[no-any-return]


@dataclass
class SyntheticVideo:
    frames_sent: int = 0
    task: asyncio.Task[None] | None = None


async def publish_synthetic_video(room: rtc.Room, width: int = 640, height: int = 360) -> SyntheticVideo:
    """Publishes a moving colour pattern at 30 fps (simulcast, like a camera) from `room`."""
    video = SyntheticVideo()
    source = rtc.VideoSource(width, height)
    track = rtc.LocalVideoTrack.create_video_track("synthetic", source)
    await room.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=True))
    # One tile computed up front, a moving window of it per frame: a busy machine still makes
    # 30 fps (computing each frame took most of a core at 1280x720).
    ys, xs = np.mgrid[0:height + 256, 0:width + 256]
    tile = np.empty((height + 256, width + 256, 4), dtype=np.uint8)
    tile[..., 0] = xs % 256
    tile[..., 1] = ys % 256
    tile[..., 2] = ((xs // 40 + ys // 40) % 2) * 255
    tile[..., 3] = 255

    async def pattern() -> None:
        while True:
            n = video.frames_sent
            dx, dy = (n * 8) % 256, (n * 4) % 256
            frame = tile[dy:dy + height, dx:dx + width].tobytes()
            source.capture_frame(rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, frame))
            video.frames_sent += 1
            await asyncio.sleep(1 / 30)

    video.task = asyncio.ensure_future(pattern())
    return video
