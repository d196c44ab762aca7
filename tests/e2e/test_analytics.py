"""Track analytics of a 60 s session agree with the subscriber's own getStats within 10 %
(bytes, frames, fps), as served by GET /stats/rooms/{room} and `meshrtc stats room`."""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from typing import Any

import httpx
import pytest
from livekit import api, rtc

from .conftest import API_KEY, API_SECRET, DevServer
from .sdk_helpers import Received, count_media, publish_synthetic, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
warnings.filterwarnings("ignore", message=".*HMAC key.*")

ROOM = "analytics"
SESSION_S = 60


def stats_token() -> str:
    return api.AccessToken(API_KEY, API_SECRET).with_identity("ops") \
        .with_grants(api.VideoGrants(room_list=True)).to_jwt()


async def room_stats(server: DevServer, window: int = 10) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{server.http_url}/stats/rooms/{ROOM}", params={"window": str(window)},
                                    headers={"Authorization": f"Bearer {stats_token()}"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def inbound_video(track: rtc.RemoteVideoTrack) -> Any:
    for stats in await track.get_stats():
        if stats.WhichOneof("stats") == "inbound_rtp" and stats.inbound_rtp.stream.kind == "video":
            return stats.inbound_rtp.inbound
    raise AssertionError("no inbound-rtp video stats")


async def sample_pair(server: DevServer, track: rtc.RemoteVideoTrack,
                      loop: asyncio.AbstractEventLoop) -> tuple[dict[str, Any], int, float]:
    """Our latest sample of the viewer's leg, and the client's frame count at the moment that
    sample was taken (our sample is up to one interval old: wait for a fresh one first)."""
    first = next(s for s in (await room_stats(server))["subscriptions"] if s["identity"] == "viewer")
    while True:
        await asyncio.sleep(0.1)
        leg = next(s for s in (await room_stats(server))["subscriptions"] if s["identity"] == "viewer")
        if leg["ts_ms"] != first["ts_ms"]:
            return leg, (await inbound_video(track)).frames_received, loop.time()


def within(ours: float, theirs: float, tolerance: float = 0.10) -> bool:
    return abs(ours - theirs) <= tolerance * max(theirs, 1)


async def test_sixty_second_session_matches_client_stats(dev_server: DevServer) -> None:
    publisher_room, viewer = rtc.Room(), rtc.Room()
    received = Received()
    count_media(viewer, received)
    tracks: list[rtc.RemoteVideoTrack] = []
    viewer.on("track_subscribed", lambda track, *_: tracks.append(track) if isinstance(
        track, rtc.RemoteVideoTrack) else None)
    publisher = None
    try:
        await viewer.connect(dev_server.url, dev_server.token("viewer", ROOM))
        await publisher_room.connect(dev_server.url, dev_server.token("camera", ROOM))
        publisher = await publish_synthetic(publisher_room, 640, 360, audio=False, simulcast=False)
        assert await wait_for(lambda: received.video_frames > 10 and tracks, 20)
        await asyncio.sleep(SESSION_S - 25)

        # fps over the same ~15 s from both sides: frames between two samples of ours, frames
        # between two readings of the client's (its own instantaneous framesPerSecond is too noisy
        # on a loaded machine to compare one value)
        loop = asyncio.get_running_loop()
        ours_before, client_before, t_before = await sample_pair(dev_server, tracks[0], loop)
        await asyncio.sleep(15)
        ours_after, client_after, t_after = await sample_pair(dev_server, tracks[0], loop)
        ours_fps = (ours_after["frames_total"] - ours_before["frames_total"]) / (
            (ours_after["ts_ms"] - ours_before["ts_ms"]) / 1000)
        client_fps = (client_after - client_before) / (t_after - t_before)
        assert within(ours_fps, client_fps), f"fps: ours {ours_fps:.1f} vs client {client_fps:.1f}"
        assert ours_after["bitrate_bps"] > 0 and ours_after["layer"] >= 0
        live = await room_stats(dev_server)
        track = next(t for t in live["tracks"] if t["identity"] == "camera")
        assert track["fps"] > 0 and track["bitrate_bps"] > 0 and track["subscribers"] == 1

        # totals once the flow has stopped and a sample was taken after it
        await publisher.stop()
        await asyncio.sleep(2)
        client = await inbound_video(tracks[0])
        await asyncio.sleep(8)  # a telemetry interval (3 s) plus the consumer's way into SQL
        final = await room_stats(dev_server, window=6)
        leg = next(s for s in final["subscriptions"] if s["identity"] == "viewer")
        assert within(leg["bytes_total"], client.bytes_received), \
            f"bytes: ours {leg['bytes_total']} vs client {client.bytes_received}"
        assert within(leg["frames_total"], client.frames_received), \
            f"frames: ours {leg['frames_total']} vs client {client.frames_received}"
        assert client.frames_received > 15 * (SESSION_S - 10)  # the session really ran ~60 s (30 fps, loaded machine)

        view = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshrtc", "stats", "room", ROOM, "--once", "--window", "30", "--url",
            dev_server.http_url, "--api-key", API_KEY, "--api-secret", API_SECRET,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ})
        out, err = await asyncio.wait_for(view.communicate(), 30)
        assert view.returncode == 0, err.decode()
        assert b"camera" in out and b"viewer" in out
    finally:
        if publisher is not None:
            await publisher.stop()
        for room in (publisher_room, viewer):
            await room.disconnect()
