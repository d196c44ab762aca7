"""Dynacast with the Python SDK: with only low-layer subscribers the publisher's top simulcast
layer stops (its own outbound stats stop growing), and it comes back when a full-size subscriber
joins."""

from __future__ import annotations

import asyncio
import warnings

import pytest
from livekit import rtc

from .conftest import DevServer
from .sdk_helpers import Received, count_media, publish_synthetic, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
warnings.filterwarnings("ignore", message=".*HMAC key.*")


async def bytes_by_rid(track: rtc.LocalVideoTrack) -> dict[str, int]:
    sent: dict[str, int] = {}
    for stats in await track.get_stats():
        if stats.WhichOneof("stats") == "outbound_rtp":
            outbound = stats.outbound_rtp
            sent[outbound.outbound.rid or "-"] = outbound.sent.bytes_sent
    return sent


async def growth(track: rtc.LocalVideoTrack, seconds: float) -> dict[str, int]:
    before = await bytes_by_rid(track)
    await asyncio.sleep(seconds)
    after = await bytes_by_rid(track)
    return {rid: after[rid] - before.get(rid, 0) for rid in after}


async def test_top_layer_stops_without_full_size_subscribers_and_resumes(dev_server: DevServer) -> None:
    publisher_room, small, big = rtc.Room(), rtc.Room(), rtc.Room()
    small_media, big_media = Received(), Received()
    count_media(small, small_media)
    count_media(big, big_media)
    publisher = None
    try:
        await publisher_room.connect(dev_server.url, dev_server.token("camera", "dynacast"),
                                     rtc.RoomOptions(dynacast=True))
        await small.connect(dev_server.url, dev_server.token("small", "dynacast"))
        publisher = await publish_synthetic(publisher_room, 1280, 720, audio=False)
        assert publisher.video is not None
        assert await wait_for(lambda: small_media.video_frames > 10, 20)
        start = await growth(publisher.video, 2)
        assert start.get("f", 0) > 5_000, f"top layer not sent at first: {start}"

        remote = small.remote_participants["camera"]
        publication = next(iter(remote.track_publications.values()))
        publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_LOW)
        await asyncio.sleep(6)  # downgrade delay (3 s) + the publisher acting on it
        stopped = await growth(publisher.video, 3)
        assert stopped.get("f", 0) < 500, f"top layer still sent with only a low-layer subscriber: {stopped}"
        assert stopped.get("q", 0) > 2_000, f"low layer must keep flowing: {stopped}"
        frames = small_media.video_frames
        await asyncio.sleep(1)
        assert small_media.video_frames > frames + 10, "the low-layer subscriber froze"

        await big.connect(dev_server.url, dev_server.token("big", "dynacast"))
        assert await wait_for(lambda: big_media.video_frames > 10, 20)
        await asyncio.sleep(2)
        resumed = await growth(publisher.video, 3)
        assert resumed.get("f", 0) > 5_000, f"top layer did not come back for a full-size subscriber: {resumed}"
        assert await wait_for(lambda: big_media.size() == (1280, 720), 15), big_media.video_sizes
    finally:
        if publisher is not None:
            await publisher.stop()
        for room in (publisher_room, small, big):
            await room.disconnect()
