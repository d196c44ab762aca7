"""LiveKit's Python SDK, unchanged, against meshrtc: publish, subscribe, data, mute, leave."""

from __future__ import annotations

import asyncio
import time
import warnings

import pytest
from livekit import rtc

from .conftest import DevServer
from .sdk_helpers import Received, count_media, publish_synthetic, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
warnings.filterwarnings("ignore", message=".*HMAC key.*")


async def test_video_audio_data_mute_leave(dev_server: DevServer) -> None:
    room_name = "sdk-basic"
    alice, bob, carol = rtc.Room(), rtc.Room(), rtc.Room()
    received = Received()
    count_media(bob, received)
    data_seen: list[tuple[str, str, bytes, str]] = []
    carol_data: list[bytes] = []
    muted: list[str] = []
    gone: list[str] = []
    bob.on("data_received", lambda p: data_seen.append(
        (p.participant.identity if p.participant else "", p.topic or "", p.data, p.kind.name
         if hasattr(p.kind, "name") else str(p.kind))))
    carol.on("data_received", lambda p: carol_data.append(p.data))
    bob.on("track_muted", lambda participant, pub: muted.append(pub.sid))
    bob.on("participant_disconnected", lambda p: gone.append(p.identity))
    speakers: list[list[str]] = []
    qualities: dict[str, object] = {}
    bob.on("active_speakers_changed", lambda people: speakers.append([p.identity for p in people]))
    bob.on("connection_quality_changed", lambda participant, quality: qualities.__setitem__(
        participant.identity, quality))
    publisher = None
    try:
        await bob.connect(dev_server.url, dev_server.token("bob", room_name))
        await carol.connect(dev_server.url, dev_server.token("carol", room_name))
        await alice.connect(dev_server.url, dev_server.token("alice", room_name))
        assert alice.local_participant.sid.startswith("PA_")
        publisher = await publish_synthetic(alice, 1280, 720)

        # Bob decodes the full layer: ≥ 60 frames in a 5 s window, at 1280x720.
        assert await wait_for(lambda: received.size() == (1280, 720), 20), received.video_sizes
        start_frames, start = received.video_frames, time.monotonic()
        await asyncio.sleep(5)
        frames = received.video_frames - start_frames
        print(f"video: {frames} frames in {time.monotonic() - start:.1f}s at {received.size()}; "
              f"audio frames {received.audio_frames}, peak {received.audio_peak}")
        assert frames >= 60
        assert received.size() == (1280, 720)
        assert received.audio_frames > 100
        assert received.audio_peak > 3000  # the 440 Hz tone, not silence

        # The 440 Hz tone makes alice an active speaker; nobody is reported in trouble (the SDK
        # only raises quality events on a change from EXCELLENT; the wire-level update is
        # checked in test_signal_protocol).
        assert await wait_for(lambda: any("alice" in s for s in speakers), 10), speakers
        assert all(q == rtc.ConnectionQuality.QUALITY_EXCELLENT for q in qualities.values()), qualities

        # Data: reliable with a topic to one destination, lossy to everyone.
        await alice.local_participant.publish_data(b"hello bob", reliable=True, topic="chat",
                                                   destination_identities=["bob"])
        await alice.local_participant.publish_data(b"lossy to all", reliable=False, topic="telemetry")
        assert await wait_for(lambda: len(data_seen) >= 2, 10), data_seen
        assert ("alice", "chat", b"hello bob") in [d[:3] for d in data_seen]
        assert ("alice", "telemetry", b"lossy to all") in [d[:3] for d in data_seen]
        assert await wait_for(lambda: b"lossy to all" in carol_data, 5)
        assert b"hello bob" not in carol_data  # destination honoured

        # Mute is seen by others.
        assert publisher.video is not None
        video_pub = next(p for p in alice.local_participant.track_publications.values()
                         if p.kind == rtc.TrackKind.KIND_VIDEO)
        video_pub.mute() if hasattr(video_pub, "mute") else publisher.video.mute()
        assert await wait_for(lambda: video_pub.sid in muted, 10), muted

        # Leaving is seen by others.
        await publisher.stop()
        publisher = None
        await alice.disconnect()
        assert await wait_for(lambda: "alice" in gone, 10)
    finally:
        if publisher is not None:
            await publisher.stop()
        for task in received.tasks:
            task.cancel()
        for room in (alice, bob, carol):
            await room.disconnect()


async def test_h264_video_is_forwarded(dev_server: DevServer) -> None:
    """A publisher choosing H.264 (the SDK offers 42e01f) reaches a subscriber decodable."""
    import numpy as np

    publisher_room, viewer = rtc.Room(), rtc.Room()
    received = Received()
    count_media(viewer, received)
    task = None
    try:
        await viewer.connect(dev_server.url, dev_server.token("viewer", "h264-room"))
        await publisher_room.connect(dev_server.url, dev_server.token("h264", "h264-room"))
        source = rtc.VideoSource(640, 360)
        track = rtc.LocalVideoTrack.create_video_track("camera", source)
        await publisher_room.local_participant.publish_track(track, rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_CAMERA, video_codec=rtc.VideoCodec.H264, simulcast=False))

        async def frames() -> None:
            index = 0
            while True:
                frame = np.zeros((360, 640, 4), dtype=np.uint8)
                frame[:, (index * 8) % 600:(index * 8) % 600 + 40] = 255
                source.capture_frame(rtc.VideoFrame(640, 360, rtc.VideoBufferType.RGBA, frame.tobytes()))
                index += 1
                await asyncio.sleep(1 / 30)

        task = asyncio.ensure_future(frames())
        assert await wait_for(lambda: received.video_frames >= 30, 20), received.video_frames
        assert received.size() == (640, 360)
        info = next(iter(next(iter(viewer.remote_participants.values())).track_publications.values()))
        assert "h264" in info.mime_type.lower()
    finally:
        if task is not None:
            task.cancel()
        for room in (publisher_room, viewer):
            await room.disconnect()
