"""How the room service hears of media nodes, with stand-in nodes on a real nats-server.

- A room service that has just started has heard no node yet. A join arriving in that window (a
  SDK client whose connect raced a room-service restart) waits for the first heartbeat instead
  of being refused with 503 "no media node available"; after the window, a DC with no media
  node still answers 503 at once.
- A node whose bus connection closes is declared down within a ping interval, even while another
  node is slow to answer its pings (busy taking over migrated participants)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.room.app import FIRST_BEAT_WAIT_BEATS, RoomService
from shared.bus import Bus
from shared.config import Settings
from shared.contracts.control import JoinAdmission, JoinRequest
from shared.contracts.subjects import heartbeat_subject, media_node_subject, room_request_subject
from shared.db import upgrade
from shared.events import Envelope, NodeHeartbeat, RoomCreated
from shared.ids import new_room_sid
from shared.natsserver import NatsServer

pytestmark = pytest.mark.timeout(60)

HEARTBEAT_MS = 500


@pytest.fixture
async def room_service(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[RoomService]:
    db = f"sqlite:///{tmp_path}/room.db"
    await asyncio.to_thread(upgrade, db)
    service = RoomService(Settings(nats_url=nats_server.url, dc="dc1", node_id="room-dc1", database_url=db,
                                   heartbeat_ms=HEARTBEAT_MS))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def join(service: RoomService, identity: str) -> JoinAdmission:
    assert service.bus is not None
    raw = await service.bus.request(room_request_subject("dc1", "join"),
                                    JoinRequest(project="devkey", room="r", identity=identity).encode(), timeout=5)
    return JoinAdmission.decode(raw)


class StandInNode:
    """A media node as the room service sees it: its own bus connection, beats, pings answered
    (after `ping_delay`)."""

    def __init__(self, node_id: str, ping_delay: float = 0.0) -> None:
        self.node_id = node_id
        self.ping_delay = ping_delay
        self.bus: Bus | None = None
        self._beats: asyncio.Task[None] | None = None

    async def start(self, url: str) -> StandInNode:
        self.bus = await Bus.connect(url, name="media", dc="dc1", node=self.node_id)
        await self.bus.serve(media_node_subject(self.node_id, "ping"), self._pong, concurrency=4)
        self._beats = asyncio.create_task(self._beat())
        return self

    async def _pong(self, data: bytes) -> bytes:
        await asyncio.sleep(self.ping_delay)
        return b""

    async def _beat(self) -> None:
        assert self.bus is not None
        while True:
            env = Envelope.new(NodeHeartbeat(node_id=self.node_id, service="media", dc="dc1",
                                             interval_ms=HEARTBEAT_MS), dc="dc1", node=self.node_id)
            await self.bus.publish(heartbeat_subject("dc1", "media"), env.to_json())
            await asyncio.sleep(HEARTBEAT_MS / 1000)

    async def vanish(self) -> None:
        """What SIGKILL looks like from the bus: the connection closes, no goodbye."""
        if self._beats is not None:
            self._beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beats
        if self.bus is not None:
            await self.bus.close()


async def test_join_right_after_start_waits_for_the_first_beat(room_service: RoomService,
                                                               nats_server: NatsServer) -> None:
    node = StandInNode("media-1")

    async def start_node_later() -> None:
        await asyncio.sleep(0.4)
        await node.start(nats_server.url)

    later = asyncio.create_task(start_node_later())
    try:
        started = time.monotonic()
        admission = await join(room_service, "alice")
        assert admission.ok, admission.error
        assert admission.node_id == "media-1"
        assert 0.3 < time.monotonic() - started < FIRST_BEAT_WAIT_BEATS * HEARTBEAT_MS / 1000 + 1
    finally:
        await later
        await node.vanish()


async def test_no_node_after_the_window_is_refused_at_once(room_service: RoomService) -> None:
    await asyncio.sleep(FIRST_BEAT_WAIT_BEATS * HEARTBEAT_MS / 1000)
    started = time.monotonic()
    admission = await join(room_service, "alice")
    assert (admission.ok, admission.status, admission.error) == (False, 503, "no media node available")
    assert time.monotonic() - started < 0.5


async def test_a_vanished_node_is_declared_down_despite_a_slow_neighbour(
        room_service: RoomService, nats_server: NatsServer) -> None:
    # The busy node answers just inside the room service's ping timeout (2 x 0.25 s).
    busy = await StandInNode("media-busy", ping_delay=0.45).start(nats_server.url)
    nodes = [await StandInNode(f"media-{i}").start(nats_server.url) for i in range(3)]
    try:
        for node in [busy, *nodes]:
            deadline = time.monotonic() + 5
            while node.node_id not in room_service._answering and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert node.node_id in room_service._answering, f"{node.node_id} never answered a ping"
        delays = []
        for node in nodes:
            await asyncio.sleep(0.37 * len(delays))  # a different phase of the ping schedule each time
            await node.vanish()
            started = time.monotonic()
            while node.node_id not in room_service._down_reported and time.monotonic() - started < 5:
                await asyncio.sleep(0.01)
            delays.append(time.monotonic() - started)
        print("declared down after", [f"{d:.2f}s" for d in delays])
        # A ping every 0.25 s; a loop that waited for every node's answer took >= 0.45 s each time.
        assert max(delays) < 0.42, delays
        assert "media-busy" not in room_service._down_reported
    finally:
        for node in [busy, *nodes]:
            await node.vanish()


async def test_the_room_service_loops_outlive_a_bus_outage_longer_than_a_publish(
        room_service: RoomService, nats_server: NatsServer) -> None:
    """A room falls idle while NATS is away longer than an awaited publish waits (publish_timeout,
    shortened here): its room.finished still reaches the stream once NATS is back, and the loop
    goes on closing rooms. A node that vanished during the outage is declared down after it."""
    assert room_service.bus is not None and room_service.store is not None
    room_service.bus.publish_timeout = 1.0
    node = await StandInNode("media-doomed").start(nats_server.url)
    await room_service._emit(RoomCreated(sid=new_room_sid(), name="idle-1", empty_timeout=1), "idle-1")
    deadline = time.monotonic() + 5
    while "media-doomed" not in room_service._answering and time.monotonic() < deadline:
        await asyncio.sleep(0.05)

    nats_server.stop(remove_store=False)
    await node.vanish()
    await asyncio.sleep(4)  # the idle room's finish and the missed beats both fall in the outage
    nats_server.start()

    await room_service._emit(RoomCreated(sid=new_room_sid(), name="idle-2", empty_timeout=1), "idle-2")

    def stored() -> list[tuple[str, str]]:
        assert room_service.store is not None
        return [(s.envelope.type, s.envelope.room or getattr(s.envelope.payload, "node_id", ""))
                for s in room_service.store.read(types=["room.finished", "node.down"])]

    deadline = time.monotonic() + 15
    while len(stored()) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert sorted(stored()) == [("node.down", "media-doomed"), ("room.finished", "idle-1"),
                                ("room.finished", "idle-2")]
