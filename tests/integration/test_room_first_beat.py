"""A room service that has just started has heard no media node yet. A join arriving in that
window (a SDK client whose connect raced a room-service restart) waits for the first
heartbeat instead of being refused with 503 "no media node available"; once the window is
over, a DC with no media node still answers 503 at once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.room.app import FIRST_BEAT_WAIT_BEATS, RoomService
from shared.config import Settings
from shared.control import JoinAdmission, JoinRequest
from shared.db import upgrade
from shared.events import Envelope, NodeHeartbeat
from shared.natsserver import NatsServer
from shared.service import heartbeat_subject
from shared.subjects import room_request_subject

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


async def beat_after(service: RoomService, delay: float) -> None:
    await asyncio.sleep(delay)
    assert service.bus is not None
    while True:
        env = Envelope.new(NodeHeartbeat(node_id="media-1", service="media", dc="dc1", interval_ms=HEARTBEAT_MS),
                           dc="dc1", node="media-1")
        await service.bus.publish(heartbeat_subject("dc1", "media"), env.to_json())
        await asyncio.sleep(HEARTBEAT_MS / 1000)


async def test_join_right_after_start_waits_for_the_first_beat(room_service: RoomService) -> None:
    beats = asyncio.create_task(beat_after(room_service, 0.4))
    try:
        started = time.monotonic()
        admission = await join(room_service, "alice")
        assert admission.ok, admission.error
        assert admission.node_id == "media-1"
        assert 0.3 < time.monotonic() - started < FIRST_BEAT_WAIT_BEATS * HEARTBEAT_MS / 1000 + 1
    finally:
        beats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beats


async def test_no_node_after_the_window_is_refused_at_once(room_service: RoomService) -> None:
    await asyncio.sleep(FIRST_BEAT_WAIT_BEATS * HEARTBEAT_MS / 1000)
    started = time.monotonic()
    admission = await join(room_service, "alice")
    assert (admission.ok, admission.status, admission.error) == (False, 503, "no media node available")
    assert time.monotonic() - started < 0.5
