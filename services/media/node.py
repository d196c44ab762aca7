"""The media node: hosts sessions of many rooms and answers the bus.

This module only wires and translates: each bus handler decodes its request, calls into the
room or session it is for, and encodes the answer. What happens in a room is decided by
`NodeRoom`, what a client says by `Session`, what is reported by `Reporter`.
"""

from __future__ import annotations

import asyncio
import logging
import os

from livekit.protocol import models, rtc

from shared.config import Settings
from shared.contracts.control import (
    CLOSE_HEADER,
    CONNECTION_HEADER,
    RESYNC_HEADER,
    Ack,
    CloseSession,
    ControlDecodeError,
    NodeStats,
    OpenSession,
    ResumableAnswer,
    ResumableQuery,
    ResumeSession,
    SessionOpened,
    SessionResumed,
)
from shared.contracts.media_commands import ROOM_WIDE_OPS, CommandResult, decode_media_command
from shared.contracts.relay import (
    TrackExport,
    TrackExported,
    media_export_subject,
    parse_hostport,
    relay_subscribe_subject,
)
from shared.contracts.subjects import (
    event_type_filter,
    media_node_subject,
    session_resume_subject,
    session_to_signal_subject,
    sessions_to_node_filter,
)
from shared.events import Envelope, EventDecodeError, NodeDown, NodeHeartbeat
from shared.ids import new_track_sid
from shared.service import Service
from shared.tasks import background

from . import periodic
from .commands import CommandError, apply_command
from .relay_link import RelayLink
from .relay_subscriptions import RelaySubscriptions
from .remote import RemoteTrack
from .reporting import Reporter
from .room import NodeRoom
from .room_links import RoomLinks
from .session import RESYNC_FRAME, Session
from .webrtc import aiortc_compat, ice
from .webrtc.peer import MediaPeer

log = logging.getLogger(__name__)

DRAIN_PACE = 1.0  # seconds between two participants moved off a draining node


class MediaNode(Service):
    name = "media"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.rooms: dict[str, NodeRoom] = {}
        self.sessions: dict[str, Session] = {}
        self.relay_link: RelayLink | None = None
        self.relay_subscriptions: RelaySubscriptions | None = None
        self.links: RoomLinks | None = None
        self.reporter: Reporter | None = None

    @property
    def region(self) -> str:
        return self.settings.region or self.settings.dc

    # ---- wiring ---------------------------------------------------------------------------
    async def on_start(self) -> None:
        assert self.bus
        bus = self.bus
        aiortc_compat.install()  # aiortc's process-wide hooks, before the first PeerConnection
        ice.configure(host_addresses=self.settings.advertise_ips or None,
                      port_min=self.settings.rtc_port_min, port_max=self.settings.rtc_port_max)
        self.reporter = Reporter(bus, lambda payload, room: self.envelope(payload, room=room), self.node_id,
                                 self.settings.dc)
        await bus.serve(media_node_subject(self.node_id, "open"), self._on_open)
        await bus.serve(media_node_subject(self.node_id, "close"), self._on_close)
        await bus.serve(media_node_subject(self.node_id, "resumable"), self._on_resumable)
        await bus.serve(media_node_subject(self.node_id, "stats"), self._on_stats)
        await bus.serve(media_node_subject(self.node_id, "ping"), self._on_ping)
        await bus.serve(media_node_subject(self.node_id, "drain"), self._on_drain)
        await bus.serve(media_node_subject(self.node_id, "command"), self._on_command, concurrency=8)
        link = self.relay_link = RelayLink(self.settings.bind_ip, self.settings.internal_ip)
        link.start()
        relay_subject = relay_subscribe_subject(self.settings.dc)

        async def relay_request(data: bytes, timeout: float) -> bytes:
            return await bus.request(relay_subject, data, timeout=timeout)

        self.relay_subscriptions = RelaySubscriptions(link, self.node_id, relay_request, self._remote_tracks)
        self.links = RoomLinks(bus, self.settings.dc, self.node_id, link, self.relay_subscriptions.wake,
                               lambda room: self.rooms.get(room.name) is room)
        await bus.serve(media_export_subject(self.node_id), self._on_export)
        background(self.relay_subscriptions.run(), "media-relay")
        await bus.subscribe(sessions_to_node_filter(self.node_id), self._on_up)
        await bus.subscribe(session_resume_subject("*"), self._on_resume)
        await bus.subscribe(event_type_filter(self.settings.dc, NodeDown.TYPE), self._on_node_down)
        rooms = self.rooms.values
        background(periodic.debug_loop(rooms, log), "media-debug")
        background(periodic.room_loop(rooms), "media-room-loop")
        background(periodic.usage_loop(self.reporter, self.sessions.values), "media-usage")
        background(periodic.telemetry_loop(self.reporter, rooms), "media-telemetry")

    def _remote_tracks(self) -> list[RemoteTrack]:
        return [track for room in list(self.rooms.values()) if room.remote for track in room.remote.remote_tracks()]

    async def on_stop(self) -> None:
        await asyncio.gather(*(s.close(models.DisconnectReason.SERVER_SHUTDOWN,
                                       action=rtc.LeaveRequest.Action.RECONNECT) for s in list(self.sessions.values())),
                             return_exceptions=True)

    def metrics_snapshot(self) -> dict[str, float]:
        values: dict[str, float] = {
            "participants": len(self.sessions), "tracks": sum(len(s.tracks) for s in self.sessions.values()),
            "packets_in_total": 0, "bytes_in_total": 0, "packets_forwarded_total": 0,
            "bytes_forwarded_total": 0, "packets_dropped_total": 0}
        for room in self.rooms.values():
            for track in room.tracks.values():
                for key, value in track.counters().items():
                    values[key] += value
        return values

    def heartbeat_load(self) -> NodeHeartbeat:
        tracks = sum(len(s.tracks) for s in self.sessions.values())
        participants = len(self.sessions)
        return NodeHeartbeat(node_id=self.node_id, service=self.name, dc=self.settings.dc,
                             participants=participants, tracks=tracks,
                             load=min(1.0, participants / max(1, self.settings.media_capacity)),
                             draining=self.draining, interval_ms=self.settings.heartbeat_ms)

    # ---- control --------------------------------------------------------------------------
    async def _on_open(self, data: bytes) -> bytes:
        try:
            spec = OpenSession.decode(data)
        except ControlDecodeError as exc:
            return SessionOpened(ok=False, status=400, error=str(exc)).encode()
        room = self.rooms.get(spec.room.name)
        if room is None:
            room = self.rooms[spec.room.name] = NodeRoom(spec.room, self.reporter, self)
            assert self.links
            self.links.attach(room)
        elif room.spec.sid != spec.room.sid:
            # Two DCs created the room at once and the mesh settled on the other sid: same room,
            # its sessions here stay in it.
            room.spec = spec.room
        for old in [self.sessions.get(spec.replaced_sid), room.by_identity(spec.identity)]:
            if old is not None and not old.closed:
                await old.close(models.DisconnectReason.DUPLICATE_IDENTITY)
        session = Session(spec, room, self, node_id=self.node_id, region=self.region, new_track_sid=_track_sid)
        self.sessions[session.sid] = session
        room.join(session)
        await session.start()
        return SessionOpened(ok=True).encode()

    async def _on_close(self, data: bytes) -> bytes:
        request = CloseSession.decode(data)
        session = self.sessions.get(request.participant_sid)
        if session is None or (request.connection_id and request.connection_id != session.connection_id):
            return Ack().encode()  # gone, or a WebSocket the session has already left by resuming
        if request.graceful:
            await session.close(models.DisconnectReason.CLIENT_INITIATED, send_leave=False)
        elif session.can_resume:
            session.detach(self.settings.resume_grace_ms / 1000)
        else:
            await session.close(models.DisconnectReason.SIGNAL_CLOSE, send_leave=False)
        return Ack().encode()

    async def _on_resumable(self, data: bytes) -> bytes:
        """A signal instance is shutting down: which of its clients would a resume find here?
        Only sessions still served by the asking WebSocket count (one that already resumed
        elsewhere is not that instance's to hand over)."""
        query = ResumableQuery.decode(data)
        resumable = [sid for sid, connection_id in query.sessions.items()
                     if (session := self.sessions.get(sid)) is not None and session.can_resume
                     and session.connection_id == connection_id]
        return ResumableAnswer(resumable=resumable).encode()

    async def _on_resume(self, msg: object) -> None:
        """Only the node holding the session answers; the others stay silent, so the signal's
        request times out when nobody holds it."""
        try:
            request = ResumeSession.decode(msg.data)  # type: ignore[attr-defined]
        except ControlDecodeError:
            return
        session = self.sessions.get(request.participant_sid)
        if session is None or session.closed:
            return
        if (request.identity, request.room, request.project) != (session.identity, session.room.name,
                                                                 session.spec.project):
            reply = SessionResumed(ok=False, error="token does not match the session")
        elif not session.can_resume:
            reply = SessionResumed(ok=False, error="session cannot be resumed")
        else:
            session.resume(request)
            reply = SessionResumed(ok=True, node_id=self.node_id)
        await msg.respond(reply.encode())  # type: ignore[attr-defined]

    async def _on_node_down(self, msg: object) -> None:
        """A signal instance died without closing its sessions: they wait for a resume. A media
        node died: the participants it hosted are gone from this node's rooms at once."""
        try:
            env = Envelope.from_json(msg.data)  # type: ignore[attr-defined]
        except EventDecodeError:
            return
        if not isinstance(env.payload, NodeDown):
            return
        if env.payload.service == "media":
            if self.links is not None and env.payload.node_id != self.node_id:
                self.links.media_node_down(env.payload.node_id, env.ts, list(self.rooms.values()))
            return
        if env.payload.service != "signal":
            return
        for session in list(self.sessions.values()):
            if session.signal_node == env.payload.node_id and session.detachment is None:
                if session.can_resume:
                    session.detach(self.settings.resume_grace_ms / 1000)
                else:
                    await session.close(models.DisconnectReason.SIGNAL_CLOSE, send_leave=False)

    async def _on_command(self, data: bytes) -> bytes:
        try:
            command = decode_media_command(data)
        except ControlDecodeError as exc:
            return CommandResult(ok=False, error=str(exc)).encode()
        room = self.rooms.get(command.room)
        if room is None:
            return CommandResult(ok=command.op in ROOM_WIDE_OPS).encode()
        try:
            return (await apply_command(room, command)).encode()
        except CommandError as exc:
            return CommandResult(ok=False, error=str(exc)).encode()

    async def _on_drain(self, data: bytes) -> bytes:
        """Stop taking joins (the heartbeat says draining), move participants off one at a time
        (each rejoins on another node), then stop the process."""
        if not self.draining:
            self.draining = True
            background(self._drain(), "media-drain")
        return Ack().encode()

    async def _drain(self) -> None:
        await asyncio.sleep(self.settings.heartbeat_ms / 1000 * 2)  # placement sees "draining" first
        while self.sessions:
            session = next(iter(self.sessions.values()))
            log.info("draining: moving %s (%d left)", session.identity, len(self.sessions))
            await session.close(models.DisconnectReason.MIGRATION, action=rtc.LeaveRequest.Action.RECONNECT)
            await asyncio.sleep(DRAIN_PACE)
        log.info("drained: stopping")
        self.stopping.set()

    async def _on_export(self, data: bytes) -> bytes:
        assert self.relay_link
        request = TrackExport.decode(data)  # a bad request is answered with the decode error
        deliver_to = parse_hostport(request.deliver_to)
        track = next((room.tracks[request.track_sid] for room in self.rooms.values()
                      if request.track_sid in room.tracks), None)
        if track is None or not track.is_local or track.closed:
            raise LookupError(f"track {request.track_sid} is not published on this node")
        self.relay_link.export(track, deliver_to, request.ttl_s)
        return TrackExported(source=self.relay_link.address_text).encode()

    async def _on_ping(self, data: bytes) -> bytes:
        return b"pong"

    async def _on_stats(self, data: bytes) -> bytes:
        return NodeStats(
            node_id=self.node_id,
            rooms={name: sorted(s.identity for s in room.sessions.values()) for name, room in self.rooms.items()},
            subscriptions={sid: sorted(s.subscriptions) for sid, s in self.sessions.items()},
            sessions=len(self.sessions), tracks=sum(len(s.tracks) for s in self.sessions.values()),
            asyncio_tasks=len(asyncio.all_tasks()), open_peers=MediaPeer.open_count(), rss_bytes=_rss_bytes(),
            ice_restarts={sid: session.publisher.ice_restarts + session.subscriber.ice_restarts
                          for sid, session in self.sessions.items()},
            relay=self.relay_link.counters() if self.relay_link else {},
        ).encode()

    async def _on_up(self, msg: object) -> None:
        subject: str = msg.subject  # type: ignore[attr-defined]
        sid = subject.split(".")[2]
        session = self.sessions.get(sid)
        if session is None:
            return
        headers = getattr(msg, "headers", None) or {}
        if RESYNC_HEADER in headers:
            if headers[RESYNC_HEADER] == session.connection_id:
                session.enqueue(RESYNC_FRAME)
            return
        session.enqueue(msg.data)  # type: ignore[attr-defined]

    # ---- ports the sessions and rooms call (ClientChannel, RoomHost) ------------------------
    async def send_to_client(self, sid: str, data: bytes, close_reason: str | None, connection_id: str = "") -> None:
        assert self.bus
        headers = {CONNECTION_HEADER: connection_id} if connection_id else {}
        if close_reason is not None:
            headers[CLOSE_HEADER] = close_reason
        await self.bus.publish(session_to_signal_subject(sid), data, headers=headers or None)

    def forward_data(self, room: NodeRoom, payload: bytes, reliable: bool) -> None:
        if self.links is not None:
            self.links.forward_data(room, payload, reliable)

    def session_closed(self, room: NodeRoom, session: Session) -> None:
        self.sessions.pop(session.sid, None)
        if not room.sessions and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            if self.links is not None:
                self.links.detach(room)


def _track_sid(track_type: int) -> str:
    return new_track_sid("A" if track_type == models.TrackType.AUDIO else "V")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0
