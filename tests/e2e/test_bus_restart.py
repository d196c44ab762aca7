"""The DC's NATS server restarted mid-call: media keeps flowing (it never touches the bus),
nobody is disconnected, and the services reconnect by themselves (new joins and events work)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from livekit import api, rtc
from livekit.protocol import rtc as rtc_proto

from shared.natsserver import nats_server_binary

from .conftest import API_KEY, API_SECRET, DevServer, start_dev_server, stop_dev_server
from .sdk_helpers import Received, count_media, publish_synthetic, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
warnings.filterwarnings("ignore", message=".*HMAC key.*")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    dev = start_dev_server(tmp_path_factory.mktemp("devbus"))
    try:
        yield dev
    finally:
        stop_dev_server(dev)


def nats_process(dev: DevServer) -> tuple[int, list[str]]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = [part.decode() for part in (entry / "cmdline").read_bytes().split(b"\0") if part]
            stat = (entry / "stat").read_text().split()
        except OSError:
            continue
        if int(stat[3]) == dev.process.pid and cmdline and cmdline[0].endswith("nats-server"):
            return int(entry.name), cmdline
    raise AssertionError("no nats-server under meshrtc dev")


async def next_offer(ws: websockets.ClientConnection, timeout: float) -> rtc_proto.SessionDescription | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        try:
            response = rtc_proto.SignalResponse.FromString(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            return None
        if response.WhichOneof("message") == "offer":
            return response.offer
    return None


async def test_nats_restart_mid_call(server: DevServer) -> None:
    publisher_room, viewer = rtc.Room(), rtc.Room()
    received = Received()
    count_media(viewer, received)
    disconnects: list[object] = []
    for room in (publisher_room, viewer):
        room.on("disconnected", lambda reason: disconnects.append(reason))
    client = api.LiveKitAPI(server.http_url, API_KEY, API_SECRET)
    publisher = None
    restarted: subprocess.Popen[bytes] | None = None
    try:
        await viewer.connect(server.url, server.token("viewer", "bus-room"))
        await publisher_room.connect(server.url, server.token("speaker", "bus-room"))
        publisher = await publish_synthetic(publisher_room, 320, 180)
        assert await wait_for(lambda: received.video_frames > 10, 20)

        # A client whose subscriber offer is outstanding when the bus goes: it gets that offer
        # again after the outage (the first copy may have been lost with the bus).
        pending = await websockets.connect(
            f"{server.url}/rtc?access_token={server.token('pending', 'bus-room')}&protocol=15&sdk=js", max_size=None)
        first_offer = await next_offer(pending, 10)
        assert first_offer is not None, "no subscriber offer for the pending client"

        pid, cmdline = nats_process(server)
        os.kill(pid, signal.SIGTERM)
        down_at = time.monotonic()
        frames_at_kill = received.video_frames
        await asyncio.sleep(3)
        assert received.video_frames > frames_at_kill + 20, "media stopped with the bus"
        restarted = subprocess.Popen([nats_server_binary(), *cmdline[1:]], stdout=subprocess.DEVNULL,  # noqa: ASYNC220
                                     stderr=subprocess.DEVNULL)
        print(f"NATS was down {time.monotonic() - down_at:.1f}s")

        again = await next_offer(pending, 15)
        await pending.close()
        assert again is not None, "the unanswered offer was not sent again after the outage"
        assert (again.id, again.sdp) == (first_offer.id, first_offer.sdp)

        late = rtc.Room()
        joined = False
        for _attempt in range(10):  # the services reconnect within a few seconds
            try:
                await late.connect(server.url, server.token("late", "bus-room"), rtc.RoomOptions(connect_timeout=10))
                joined = True
                break
            except rtc.ConnectError:
                await asyncio.sleep(1)
        assert joined, "no join possible after NATS came back"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        identities: list[str] = []
        while loop.time() < deadline:
            response = await client.room.list_participants(api.ListParticipantsRequest(room="bus-room"))
            identities = sorted(p.identity for p in response.participants)
            if identities == ["late", "speaker", "viewer"]:
                break
            await asyncio.sleep(0.5)
        assert identities == ["late", "speaker", "viewer"]
        assert not disconnects
        await late.disconnect()
    finally:
        if publisher is not None:
            await publisher.stop()
        for room in (publisher_room, viewer):
            await room.disconnect()
        await client.aclose()
        if restarted is not None:
            restarted.terminate()
            restarted.wait(10)
