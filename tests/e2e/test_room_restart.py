"""The room service is rebuilt by replay: SIGKILLed during a 10-participant session and
restarted (by the dev supervisor), it lists the same participants and nobody is disconnected."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import warnings
from pathlib import Path

import pytest
from livekit import api, rtc

from .conftest import API_KEY, API_SECRET, DevServer
from .sdk_helpers import SyntheticPublisher, publish_synthetic, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
warnings.filterwarnings("ignore", message=".*HMAC key.*")


def service_pid(server: DevServer, service: str) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text().split()
        except OSError:
            continue
        if int(stat[3]) == server.process.pid and b"serve" in cmdline and service.encode() in cmdline:
            return int(entry.name)
    return 0  # not running (e.g. between a kill and the supervisor's restart)


async def test_room_service_killed_and_replayed(dev_server: DevServer) -> None:
    room_name = "restart-room"
    rooms = [rtc.Room() for _ in range(10)]
    disconnects: list[str] = []
    publishers: list[SyntheticPublisher] = []
    client = api.LiveKitAPI(dev_server.http_url, API_KEY, API_SECRET)
    try:
        for index, room in enumerate(rooms):
            room.on("disconnected", lambda reason, i=index: disconnects.append(f"p{i}: {reason}"))
            await room.connect(dev_server.url, dev_server.token(f"p{index}", room_name))
        for room in rooms[:3]:
            publishers.append(await publish_synthetic(room, video=False))

        async def identities() -> list[str]:
            response = await client.room.list_participants(api.ListParticipantsRequest(room=room_name))
            return sorted(p.identity for p in response.participants)

        expected = sorted(f"p{i}" for i in range(10))
        loop = asyncio.get_running_loop()

        async def settled() -> api.ListParticipantsResponse:
            """Every join and all three publications folded into the room state."""
            deadline = loop.time() + 30
            while True:
                response = await client.room.list_participants(api.ListParticipantsRequest(room=room_name))
                published = sum(len(p.tracks) for p in response.participants)
                if (sorted(p.identity for p in response.participants) == expected and published == 3) \
                        or loop.time() > deadline:
                    return response
                await asyncio.sleep(0.3)

        before = await settled()
        assert sorted(p.identity for p in before.participants) == expected
        tracks_before = {p.identity: sorted(t.sid for t in p.tracks) for p in before.participants}
        room_sid = (await client.room.list_rooms(api.ListRoomsRequest(names=[room_name]))).rooms[0].sid

        old_pid = service_pid(dev_server, "room")
        assert old_pid, "no room service under meshrtc dev"
        os.kill(old_pid, signal.SIGKILL)
        started = time.monotonic()
        assert await wait_for(lambda: service_pid(dev_server, "room") not in (0, old_pid), 30)

        after = None
        while time.monotonic() - started < 60:
            try:
                after = await client.room.list_participants(api.ListParticipantsRequest(room=room_name))
                break
            except api.TwirpError:
                await asyncio.sleep(0.5)
        assert after is not None, "room service did not come back"
        print(f"room service back after {time.monotonic() - started:.1f}s")
        assert sorted(p.identity for p in after.participants) == expected
        assert {p.identity: sorted(t.sid for t in p.tracks) for p in after.participants} == tracks_before
        assert (await client.room.list_rooms(api.ListRoomsRequest(names=[room_name]))).rooms[0].sid == room_sid
        assert not disconnects
        assert all(room.connection_state == rtc.ConnectionState.CONN_CONNECTED for room in rooms)

        # Still serving joins and changes after the restart; the replayed state keeps folding.
        late = rtc.Room()
        await late.connect(dev_server.url, dev_server.token("late", room_name))
        rooms.append(late)
        assert await wait_for(lambda: True, 0)
        deadline = loop.time() + 15
        while "late" not in await identities() and loop.time() < deadline:
            await asyncio.sleep(0.3)
        assert "late" in await identities()
    finally:
        for publisher in publishers:
            await publisher.stop()
        for room in rooms:
            await room.disconnect()
        await client.aclose()
