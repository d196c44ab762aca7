"""Room service wiring: admissions over the bus, node heartbeats, and the room state folded
from the DC's event stream and persisted in the SQL event store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from shared.bus import MsgMeta
from shared.config import Settings
from shared.control import JoinRequest
from shared.db import check_database, make_engine
from shared.events import Envelope, NodeDown, NodeHeartbeat, ParticipantJoined
from shared.eventstore import EventStore
from shared.service import Service, heartbeat_subject
from shared.subjects import room_request_subject, stream_name

from .admission import Admissions
from .placement import NodePlacement
from .state import RoomRegistry

log = logging.getLogger(__name__)


class RoomService(Service):
    name = "room"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.registry = RoomRegistry()
        self.placement = NodePlacement()
        self.admissions = Admissions(self.registry, self.placement, settings.dc, settings.media_capacity)
        self.store: EventStore | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer = None
        self._down_reported: set[str] = set()

    async def on_start(self) -> None:
        assert self.bus
        await asyncio.to_thread(check_database, self.settings.database_url)
        self.store = EventStore(make_engine(self.settings.database_url))
        replayed = 0
        for stored in await asyncio.to_thread(self.store.read):
            self.registry.apply(stored.envelope)
            replayed += 1
        log.info("room state rebuilt from %d stored events (%d rooms)", replayed, len(self.registry.rooms))
        await self.bus.subscribe(heartbeat_subject(self.settings.dc, "media"), self._on_heartbeat)
        await self.bus.serve(room_request_subject(self.settings.dc, "join"), self._on_join)
        self._consumer = await self.bus.consume(
            stream_name("events", self.settings.dc), f"room-{self.settings.dc}", self._on_event)
        self._tasks.append(asyncio.create_task(self._watch_nodes(), name="room-node-watch"))

    async def on_stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _on_heartbeat(self, msg: object) -> None:
        try:
            env = Envelope.from_json(msg.data)  # type: ignore[attr-defined]
        except ValueError:
            return
        if isinstance(env.payload, NodeHeartbeat):
            self.placement.heartbeat(env.payload, time.time())
            self._down_reported.discard(env.payload.node_id)

    async def _on_join(self, data: bytes) -> bytes:
        request = JoinRequest.decode(data)
        decision = self.admissions.decide(request)
        for payload in decision.events:
            env = self.envelope(payload, room=request.room)
            self.registry.apply(env)  # visible to the next join at once, before the stream echoes it
            await self.bus.publish_event(env)  # type: ignore[union-attr]
        return decision.admission.encode()

    async def _on_event(self, env: Envelope, meta: MsgMeta) -> None:
        self.registry.apply(env)
        assert self.store
        await asyncio.to_thread(self.store.append, env)
        if isinstance(env.payload, ParticipantJoined):
            self.admissions.joined(env.payload.sid)

    async def _watch_nodes(self) -> None:
        """A media node that stops beating is declared down (once) so migration can start."""
        while True:
            await asyncio.sleep(0.25)
            for node_id in self.placement.dead_nodes(time.time()):
                if node_id in self._down_reported:
                    continue
                self._down_reported.add(node_id)
                self.placement.forget(node_id)
                log.warning("media node %s missed its heartbeats: declaring it down", node_id)
                await self.bus.publish_event(self.envelope(  # type: ignore[union-attr]
                    NodeDown(node_id=node_id, service="media", dc=self.settings.dc, reason="missed_heartbeats")))


async def main(settings: Settings) -> None:
    await RoomService(settings).run()
