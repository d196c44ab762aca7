"""Selective subscription and subscription permissions with the Python SDK."""

from __future__ import annotations

import asyncio
import warnings

import pytest
from livekit import rtc

from .conftest import DevServer
from .sdk_helpers import Received, count_media, publish_synthetic, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]
warnings.filterwarnings("ignore", message=".*HMAC key.*")


async def test_manual_subscription_receives_exactly_what_it_asks_for(dev_server: DevServer) -> None:
    publisher_room, picky = rtc.Room(), rtc.Room()
    received = Received()
    count_media(picky, received)
    subscribed: list[str] = []
    picky.on("track_subscribed", lambda track, pub, participant: subscribed.append(pub.sid))
    publisher = None
    try:
        await picky.connect(dev_server.url, dev_server.token("picky", "manual"), rtc.RoomOptions(auto_subscribe=False))
        await publisher_room.connect(dev_server.url, dev_server.token("source", "manual"))
        publisher = await publish_synthetic(publisher_room, 320, 180)

        def publications() -> int:
            remote = picky.remote_participants.get("source")
            return len(remote.track_publications) if remote else 0

        assert await wait_for(lambda: publications() == 2, 15)
        await asyncio.sleep(2)
        assert subscribed == [] and received.audio_frames == 0 and received.video_frames == 0

        remote = picky.remote_participants["source"]
        video = next(p for p in remote.track_publications.values() if p.kind == rtc.TrackKind.KIND_VIDEO)
        video.set_subscribed(True)
        assert await wait_for(lambda: received.video_frames > 10, 15)
        assert subscribed == [video.sid] and received.audio_frames == 0

        video.set_subscribed(False)
        await asyncio.sleep(1.5)
        frames = received.video_frames
        await asyncio.sleep(2)
        assert received.video_frames - frames <= 2  # stopped (a frame in flight at most)
    finally:
        if publisher is not None:
            await publisher.stop()
        for room in (publisher_room, picky):
            await room.disconnect()


async def test_permission_change_stops_a_denied_subscriber(dev_server: DevServer) -> None:
    publisher_room, friend, stranger = rtc.Room(), rtc.Room(), rtc.Room()
    friend_media, stranger_media = Received(), Received()
    count_media(friend, friend_media)
    count_media(stranger, stranger_media)
    publisher = None
    try:
        await friend.connect(dev_server.url, dev_server.token("friend", "perm"))
        await stranger.connect(dev_server.url, dev_server.token("stranger", "perm"))
        await publisher_room.connect(dev_server.url, dev_server.token("owner", "perm"))
        publisher = await publish_synthetic(publisher_room, 320, 180, audio=False)
        assert await wait_for(lambda: friend_media.video_frames > 10 and stranger_media.video_frames > 10, 20)

        publisher_room.local_participant.set_track_subscription_permissions(
            allow_all_participants=False,
            participant_permissions=[rtc.ParticipantTrackPermission(participant_identity="friend", allow_all=True)])
        await asyncio.sleep(2)
        stranger_frames, friend_frames = stranger_media.video_frames, friend_media.video_frames
        await asyncio.sleep(2)
        assert stranger_media.video_frames - stranger_frames <= 2, "denied subscriber still gets media"
        assert friend_media.video_frames - friend_frames > 10, "allowed subscriber lost media"

        publisher_room.local_participant.set_track_subscription_permissions(allow_all_participants=True)
        assert await wait_for(lambda: stranger_media.video_frames > stranger_frames + 10, 15)
    finally:
        if publisher is not None:
            await publisher.stop()
        for room in (publisher_room, friend, stranger):
            await room.disconnect()
