"""Room lifecycle as LiveKit defines it: empty_timeout, departure_timeout, max_participants."""

from __future__ import annotations

import asyncio
import warnings

import pytest
from livekit import api, rtc

from .conftest import API_KEY, API_SECRET, DevServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
warnings.filterwarnings("ignore", message=".*HMAC key.*")


async def room_exists(client: api.LiveKitAPI, name: str) -> bool:
    return bool((await client.room.list_rooms(api.ListRoomsRequest(names=[name]))).rooms)


async def wait_gone(client: api.LiveKitAPI, name: str, timeout: float) -> float | None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < timeout:
        if not await room_exists(client, name):
            return loop.time() - start
        await asyncio.sleep(0.25)
    return None


async def test_empty_and_departure_timeouts(dev_server: DevServer) -> None:
    client = api.LiveKitAPI(dev_server.http_url, API_KEY, API_SECRET)
    room = rtc.Room()
    try:
        await client.room.create_room(api.CreateRoomRequest(name="never-joined", empty_timeout=2))
        assert await room_exists(client, "never-joined")
        closed_after = await wait_gone(client, "never-joined", 15)
        assert closed_after is not None and closed_after >= 1.0, closed_after

        await client.room.create_room(api.CreateRoomRequest(name="left-behind", empty_timeout=300,
                                                            departure_timeout=2))
        await room.connect(dev_server.url, dev_server.token("visitor", "left-behind"))
        await asyncio.sleep(3)  # longer than departure_timeout: a present participant keeps the room
        assert await room_exists(client, "left-behind")
        await room.disconnect()
        closed_after = await wait_gone(client, "left-behind", 15)
        assert closed_after is not None, "room outlived its departure_timeout"
    finally:
        await room.disconnect()
        await client.aclose()


async def test_max_participants_refuses_the_extra_join(dev_server: DevServer) -> None:
    client = api.LiveKitAPI(dev_server.http_url, API_KEY, API_SECRET)
    rooms = [rtc.Room() for _ in range(3)]
    try:
        await client.room.create_room(api.CreateRoomRequest(name="small-room", max_participants=2))
        await rooms[0].connect(dev_server.url, dev_server.token("one", "small-room"))
        await rooms[1].connect(dev_server.url, dev_server.token("two", "small-room"))
        with pytest.raises(rtc.ConnectError):
            await rooms[2].connect(dev_server.url, dev_server.token("three", "small-room"),
                                   rtc.RoomOptions(connect_timeout=10))
        # the same identity rejoining is a replacement, not an extra participant
        again = rtc.Room()
        rooms.append(again)
        await again.connect(dev_server.url, dev_server.token("two", "small-room"))
        # Room state is folded from events: the replacement's join reaches it just after connect().
        seen: list[str] = []
        deadline = asyncio.get_running_loop().time() + 15
        while asyncio.get_running_loop().time() < deadline:
            participants = await client.room.list_participants(api.ListParticipantsRequest(room="small-room"))
            seen = sorted(p.identity for p in participants.participants)
            if seen == ["one", "two"]:
                break
            await asyncio.sleep(0.2)
        assert seen == ["one", "two"]
    finally:
        for room in rooms:
            await room.disconnect()
        await client.aclose()
