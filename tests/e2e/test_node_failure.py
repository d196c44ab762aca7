"""A media node SIGKILLed mid-call: its participants are told to rejoin, land on a healthy node,
republish, and media flows again (failover is event handlers reacting to `node.down`)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit import api, rtc

from .conftest import API_KEY, API_SECRET, DevServer, start_dev_server, stop_dev_server
from .sdk_helpers import Received, count_media, publish_synthetic, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
warnings.filterwarnings("ignore", message=".*HMAC key.*")


@pytest.fixture(scope="module")
def two_node_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = start_dev_server(tmp_path_factory.mktemp("dev2"), "--media-nodes", "2")
    try:
        yield server
    finally:
        stop_dev_server(server)


def media_pid(server: DevServer, node_id: str) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text().split()
        except OSError:
            continue
        if int(stat[3]) == server.process.pid and f"MESHRTC_NODE_ID={node_id}".encode() in environ:
            return int(entry.name)
    return 0


KILLS = 4  # of the node holding both; before the stolen-m-line fix about 1 kill in 10 lost the viewer's media


async def test_participants_of_a_killed_node_come_back(two_node_server: DevServer) -> None:
    """Publisher and viewer on one node, that node SIGKILLed, KILLS times in a row: every time
    video comes back, and the viewer is never offered the dead incarnation's tracks (ghosts)."""
    server = two_node_server
    publisher_room, viewer = rtc.Room(), rtc.Room()
    received = Received()
    count_media(viewer, received)
    frame_times = received.video_times
    subscribed: list[tuple[float, str]] = []
    viewer.on("track_subscribed", lambda track, publication, participant:
              subscribed.append((time.monotonic(), publication.sid)))
    client = api.LiveKitAPI(server.http_url, API_KEY, API_SECRET)
    publisher = None
    try:
        await viewer.connect(server.url, server.token("viewer", "failover"))
        await publisher_room.connect(server.url, server.token("presenter", "failover"))
        publisher = await publish_synthetic(publisher_room, 640, 360, audio=False)
        assert await wait_for(lambda: received.video_frames > 20, 20)
        gaps: list[float] = []
        for kill in range(KILLS):
            hosting = []
            for _ in range(100):  # the node killed last time may still be restarting
                hosting = [n for n in ("media-dc1-1", "media-dc1-2")
                           if "failover" in (await server.node_stats(n)).rooms]
                if len(hosting) == 1:
                    break
                await asyncio.sleep(0.1)
            assert len(hosting) == 1, hosting
            pid = media_pid(server, hosting[0])
            assert pid
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            resumed = await wait_for(lambda killed_at=killed_at: bool(frame_times) and frame_times[-1] > killed_at + 0.5
                                     and received.video_frames > 0, 20)
            assert resumed, f"kill {kill + 1}: video never came back after {hosting[0]} died"
            await asyncio.sleep(2)
            gaps.append(received.longest_video_gap(killed_at))
            participants = await client.room.list_participants(api.ListParticipantsRequest(room="failover"))
            identities = sorted(p.identity for p in participants.participants)
            assert identities == ["presenter", "viewer"], identities
            presenter = next(p for p in participants.participants if p.identity == "presenter")
            assert len(presenter.tracks) == 1  # republished after the rejoin
            after = {sid for at, sid in subscribed if at > killed_at}
            assert after == {presenter.tracks[0].sid}, f"kill {kill + 1}: offered {after}, " \
                                                      f"the presenter publishes {presenter.tracks[0].sid}"
        print(f"longest video gaps after {KILLS} SIGKILLs of the node holding both: "
              + ", ".join(f"{gap:.2f}s" for gap in gaps))
        assert max(gaps) < 10
    finally:
        if publisher is not None:
            await publisher.stop()
        for room in (publisher_room, viewer):
            await room.disconnect()
        await client.aclose()


async def test_rolling_drain_keeps_everyone_in_the_room(two_node_server: DevServer) -> None:
    """Drain each media node in turn during a 10-participant call (the dev supervisor restarts
    it): nobody leaves for good; the worst video gap a viewer saw is reported."""
    import subprocess
    import sys

    server = two_node_server
    size = 10
    rooms = [rtc.Room() for _ in range(size)]
    client = api.LiveKitAPI(server.http_url, API_KEY, API_SECRET)
    publishers = []
    viewers = {index: Received() for index in (5, 9)}
    for index, received in viewers.items():
        count_media(rooms[index], received)
    try:
        for index, room in enumerate(rooms):
            await room.connect(server.url, server.token(f"member{index}", "rolling"))
        publishers.append(await publish_synthetic(rooms[0], 320, 180))
        expected = [f"member{i}" for i in range(size)]
        assert await wait_for(lambda: all(v.video_frames > 20 for v in viewers.values()), 30)

        async def identities() -> list[str]:
            response = await client.room.list_participants(api.ListParticipantsRequest(room="rolling"))
            return sorted(p.identity for p in response.participants)

        rolling_started = time.monotonic()
        for node in ("media-dc1-1", "media-dc1-2"):
            if "rolling" not in (await server.node_stats(node)).rooms:
                continue
            started = time.monotonic()
            result = await asyncio.to_thread(subprocess.run, [
                sys.executable, "-m", "meshrtc", "node", "drain", node, "--nats-url", server.nats_url,
                "--wait", "120"], capture_output=True, text=True, timeout=150)
            assert result.returncode == 0, result.stdout + result.stderr
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while await identities() != expected and loop.time() < deadline:
                await asyncio.sleep(0.5)
            print(f"drained {node} in {time.monotonic() - started:.1f}s")
            assert await identities() == expected
        assert await wait_for(lambda: all(v.video_times[-1] > time.monotonic() - 1 for v in viewers.values()), 30), \
            "a viewer has no video after the rolling restart"
        worst = {index: received.longest_video_gap(rolling_started) for index, received in viewers.items()}
        print(f"rolling restart of both media nodes, {size} participants: worst video gap per viewer "
              f"{ {f'member{i}': round(g, 2) for i, g in worst.items()} } s")
        assert all(room.connection_state == rtc.ConnectionState.CONN_CONNECTED for room in rooms)
    finally:
        for publisher in publishers:
            await publisher.stop()
        for room in rooms:
            await room.disconnect()
        await client.aclose()
