"""Room service wiring: admissions over the bus, node heartbeats, and the room state folded
from every DC's events (REPLICA_<DC>) and persisted in the SQL event store.

Across DCs (docs/multi-dc.md): this DC places joins on its own media nodes and declares only its
own nodes down; it closes idle rooms only when it is the room's owner DC (the DC of the winning
creation), so a room with participants elsewhere is judged on all of them; it evicts its own
participants that another DC asked to evict (duplicate identity); its webhook workers send the
webhooks of events that originated here. It runs the replication kicker for its replica.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time

from livekit.protocol import models

from shared.bus import BusTimeout, MsgMeta, NoResponders, RemoteError
from shared.bus_consumer import Consumer
from shared.config import Settings
from shared.contracts.control import ApiCall, ApiResult, JoinRequest
from shared.contracts.media_commands import CommandResult, MediaCommand, RemoveParticipant
from shared.contracts.subjects import heartbeat_subject, media_node_subject, room_request_subject
from shared.db import check_database, make_engine
from shared.events import (
    Envelope,
    EventPayload,
    NodeDown,
    NodeHeartbeat,
    ParticipantEvictRequested,
    ParticipantJoined,
    ParticipantLeft,
    RoomFinished,
)
from shared.eventstore import EventStore
from shared.ids import derived_event_id
from shared.replication import SourceKicker, replica_stream
from shared.service import Service
from shared.tasks import cancel_and_wait

from .admission import Admissions
from .api import ApiError, RoomApi, b64
from .placement import NodePlacement
from .state import RoomRegistry
from .webhooks import WebhookWorker

log = logging.getLogger(__name__)

NODE_WATCH_INTERVAL = 0.25  # seconds between two looks at the media nodes (pings and heartbeats)
# A room service that has just (re)started has heard no heartbeat yet: for this many beat
# intervals a join waits for the first one instead of being refused with "no media node".
FIRST_BEAT_WAIT_BEATS = 3


class RoomService(Service):
    name = "room"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.registry = RoomRegistry()
        self.placement = NodePlacement()
        self.admissions = Admissions(self.registry, self.placement, settings.dc, settings.media_capacity)
        self._first_beat = asyncio.Event()
        self._started_at = time.monotonic()
        self.store: EventStore | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer: Consumer | None = None
        self.kicker: SourceKicker | None = None
        self._down_reported: set[str] = set()
        # Nodes that answered a ping since our bus connection last came up: only these can be
        # found "gone" (after a NATS restart a node may resubscribe later than we do).
        self._answering: set[str] = set()
        self._pingers: dict[str, asyncio.Task[None]] = {}
        self.webhooks: list[WebhookWorker] = []
        self.api = RoomApi(self.registry, self._send_command, self._emit)

    async def on_start(self) -> None:
        assert self.bus
        self._started_at = time.monotonic()
        await asyncio.to_thread(check_database, self.settings.database_url)
        self.store = EventStore(make_engine(self.settings.database_url))
        replayed = 0
        for stored in await asyncio.to_thread(self.store.read):
            self.registry.apply(stored.envelope)
            replayed += 1
        log.info("room state rebuilt from %d stored events (%d rooms)", replayed, len(self.registry.rooms))
        await self.bus.subscribe(heartbeat_subject(self.settings.dc, "media"), self._on_heartbeat)
        self.bus.on_reconnect(self._after_reconnect)
        await self.bus.serve(room_request_subject(self.settings.dc, "join"), self._on_join)
        await self.bus.serve(room_request_subject(self.settings.dc, "api"), self._on_api, concurrency=8)
        self._consumer = await self.bus.consume(
            replica_stream(self.settings.dc), f"room-{self.settings.dc}", self._on_event)
        if len(self.settings.mesh_dcs) > 1:
            self.kicker = SourceKicker(self.bus.nc, self.bus.js, self.settings.dc, self.settings.mesh_dcs).start()
        self._tasks.append(asyncio.create_task(self._watch_nodes(), name="room-node-watch"))
        self._tasks.append(asyncio.create_task(self._close_idle_rooms(), name="room-lifecycle"))
        await self._start_webhooks()

    async def _start_webhooks(self) -> None:
        """One durable webhook worker per configured URL, signing with the first API key."""
        if not self.settings.webhook_urls:
            return
        assert self.bus and self.store
        if not self.settings.api_keys:
            log.error("webhook URLs configured but no API key to sign them with (MESHRTC_API_KEYS): not sending")
            return
        api_key, api_secret = next(iter(self.settings.api_keys.items()))
        for url in dict.fromkeys(self.settings.webhook_urls):
            worker = WebhookWorker(self.bus, self.store, url, api_key=api_key, api_secret=api_secret)
            await worker.start()
            self.webhooks.append(worker)

    async def on_stop(self) -> None:
        if self.kicker is not None:
            await self.kicker.stop()
        for worker in self.webhooks:
            await worker.stop()
        for task in [*self._tasks]:
            await cancel_and_wait(task)
        for task in list(self._pingers.values()):  # after the watch loop, which starts them
            await cancel_and_wait(task)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _on_heartbeat(self, msg: object) -> None:
        try:
            env = Envelope.from_json(msg.data)  # type: ignore[attr-defined]
        except ValueError:
            return
        if isinstance(env.payload, NodeHeartbeat):
            if self.placement.heartbeat(env.payload, time.time()):
                log.info("media node %s is up: placing participants on it", env.payload.node_id)
            if env.payload.dc == self.settings.dc:
                self._first_beat.set()
            self._down_reported.discard(env.payload.node_id)

    async def _on_join(self, data: bytes) -> bytes:
        request = JoinRequest.decode(data)
        await self._await_first_beat()
        decision = self.admissions.decide(request)
        for payload in decision.events:
            env = self.envelope(payload, room=request.room)
            self.registry.apply(env)  # visible to the next join at once, before the stream echoes it
            await self.bus.publish_event(env)  # type: ignore[union-attr]
        return decision.admission.encode()

    async def _await_first_beat(self) -> None:
        if self._first_beat.is_set():
            return
        window = FIRST_BEAT_WAIT_BEATS * self.settings.heartbeat_ms / 1000
        remaining = self._started_at + window - time.monotonic()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_beat.wait(), remaining)

    async def _emit(self, payload: EventPayload, room: str) -> None:
        env = self.envelope(payload, room=room)
        self.registry.apply(env)  # the caller's answer reflects it at once
        await self.bus.publish_event(env)  # type: ignore[union-attr]

    def _emit_queued(self, payload: EventPayload, room: str | None = None) -> None:
        """For the service's own loops: through the outbox, retried for as long as NATS is away,
        so a long bus outage cannot kill the loop that noticed something (an awaited publish gives
        up after publish_timeout)."""
        env = self.envelope(payload, room=room)
        self.registry.apply(env)
        self.bus.publish_event_nowait(env)  # type: ignore[union-attr]

    async def _send_command(self, node: str, command: MediaCommand) -> CommandResult:
        assert self.bus
        try:
            raw = await self.bus.request(media_node_subject(node, "command"), command.encode(), timeout=5.0)
        except (BusTimeout, RemoteError) as exc:
            return CommandResult(ok=False, error=f"media node {node}: {exc}")
        return CommandResult.decode(raw)

    async def _on_api(self, data: bytes) -> bytes:
        call = ApiCall.decode(data)
        try:
            response = await self.api.call(call.method, base64.b64decode(call.body), call.project)
        except ApiError as exc:
            return ApiResult(ok=False, code=exc.code, msg=exc.msg).encode()
        return ApiResult(ok=True, body=b64(response)).encode()

    async def _close_idle_rooms(self) -> None:
        """Room lifecycle: a room nobody joined closes after empty_timeout; one everybody left
        closes after departure_timeout."""
        while True:
            await asyncio.sleep(1.0)
            now = int(time.time() * 1000)
            for room in list(self.registry.rooms.values()):
                if room.origin_dc and room.origin_dc != self.settings.dc:
                    continue  # the owner DC decides, on the participants of every DC
                if room.participants or self.admissions.has_pending(room.name):
                    continue
                if room.last_departure_ms:
                    idle_since, limit = room.last_departure_ms, room.departure_timeout
                else:
                    idle_since, limit = room.created_at_ms, room.empty_timeout
                if limit and now - idle_since >= limit * 1000:
                    self._emit_queued(RoomFinished(sid=room.sid, reason="idle", merged_sids=room.merged_sids),
                                      room.name)

    async def _on_event(self, env: Envelope, meta: MsgMeta) -> None:
        self.registry.apply(env)
        if isinstance(env.payload, ParticipantJoined):
            self.admissions.joined(env.payload.sid)  # now a participant: no longer counted as pending too
        assert self.store
        await asyncio.to_thread(self.store.append, env)
        if isinstance(env.payload, NodeDown) and env.payload.service == "media":
            if env.payload.dc == self.settings.dc:  # each DC migrates the participants of its own nodes
                await self._node_lost(env)
        elif isinstance(env.payload, ParticipantEvictRequested) and env.payload.dc == self.settings.dc:
            await self._evict(env)

    async def _evict(self, env: Envelope) -> None:
        """Another DC admitted this identity again: close our old session (idempotent: a session
        already gone is no longer in the room state, and removing it twice does nothing)."""
        assert isinstance(env.payload, ParticipantEvictRequested)
        room = self.registry.rooms.get(env.room or "")
        participant = room.participants.get(env.payload.sid) if room is not None else None
        if room is None or participant is None or participant.dc != self.settings.dc:
            return
        reason = models.DisconnectReason.Value(env.payload.reason) if env.payload.reason in \
            models.DisconnectReason.keys() else models.DisconnectReason.DUPLICATE_IDENTITY
        result = await self._send_command(participant.node, RemoveParticipant(
            room=room.name, participant_sid=participant.sid, reason=reason))
        if not result.ok:
            log.warning("could not evict %s (%s) from %s: %s", participant.identity, participant.sid,
                        participant.node, result.error)

    async def _node_lost(self, env: Envelope) -> None:
        """The participants of a dead media node have left it: signal tells their clients to
        rejoin (they are placed on a healthy node); here they leave the room state. Ids derive
        from the node.down event, so handling it twice publishes nothing new (the node watch of
        this service already queued them before the node.down itself, see _declare_down)."""
        assert isinstance(env.payload, NodeDown)
        self.placement.forget(env.payload.node_id)
        for left in self._departures(env):
            self.registry.apply(left)
            await self.bus.publish_event(left)  # type: ignore[union-attr]

    def _departures(self, down: Envelope) -> list[Envelope]:
        """participant.left{MIGRATION} for each participant of the node `down` declares dead."""
        assert isinstance(down.payload, NodeDown)
        return [Envelope.new(ParticipantLeft(sid=participant.sid, identity=participant.identity, reason="MIGRATION"),
                             dc=self.settings.dc, node=self.node_id, room=room.name,
                             event_id=derived_event_id(down.id, participant.sid))
                for room in list(self.registry.rooms.values()) for participant in list(room.participants.values())
                if participant.node == down.payload.node_id]

    async def _watch_nodes(self) -> None:
        """A media node is declared down (once) so migration can start, when its bus connection is
        gone (a ping finds no responder: at once) or when it stops beating (a few beats later)."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(NODE_WATCH_INTERVAL)
            now = time.monotonic()
            late, last = now - last > 3 * NODE_WATCH_INTERVAL, now
            if not self.bus.is_connected:  # type: ignore[union-attr]
                self.placement.grace(time.time())  # beats we cannot hear prove nothing
                continue
            for node_id in self.placement.nodes:
                pinger = self._pingers.get(node_id)
                if node_id not in self._down_reported and (pinger is None or pinger.done()):
                    self._pingers[node_id] = asyncio.create_task(self._ping(node_id), name=f"room-ping-{node_id}")
            if late:
                continue  # this loop stalled: beats may be queued unread, so judge nobody yet
            for node_id in self.placement.dead_nodes(time.time()):
                await self._declare_down(node_id, "missed_heartbeats")

    async def _ping(self, node_id: str) -> None:
        """Each node is pinged on its own schedule: a node slow to answer (busy taking over
        migrated participants) must not delay noticing that another one is gone."""
        while node_id in self.placement.nodes and node_id not in self._down_reported:
            if self.bus.is_connected and await self._connection_gone(node_id):  # type: ignore[union-attr]
                await self._declare_down(node_id, "bus_connection_closed")
                return
            await asyncio.sleep(NODE_WATCH_INTERVAL)

    def _after_reconnect(self) -> None:
        self.placement.grace(time.time())
        self._answering.clear()

    async def _connection_gone(self, node_id: str) -> bool:
        try:
            await self.bus.request(media_node_subject(node_id, "ping"), b"",  # type: ignore[union-attr]
                                   timeout=2 * NODE_WATCH_INTERVAL)
        except NoResponders:
            return node_id in self._answering and node_id in self.placement.nodes
        except (BusTimeout, RemoteError):
            return False  # slow is not gone: the heartbeats judge that
        self._answering.add(node_id)
        return False

    async def _declare_down(self, node_id: str, reason: str) -> None:
        if node_id in self._down_reported:
            return
        self._down_reported.add(node_id)
        self._answering.discard(node_id)
        self.placement.forget(node_id)
        log.warning("media node %s is down (%s)", node_id, reason.replace("_", " "))
        down = self.envelope(NodeDown(node_id=node_id, service="media", dc=self.settings.dc, reason=reason))
        # The departures go out before the node.down that makes signal send the clients to
        # rejoin: a node that takes a rejoining client replays the room's events, and must not
        # find the dead node's participants (and their tracks) still there.
        for left in self._departures(down):
            self.registry.apply(left)
            self.bus.publish_event_nowait(left)  # type: ignore[union-attr]
        self.registry.apply(down)
        self.bus.publish_event_nowait(down)  # type: ignore[union-attr]


async def main(settings: Settings) -> None:
    await RoomService(settings).run()
