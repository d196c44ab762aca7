"""The media node: hosts sessions of many rooms, talks to signal over per-session subjects and
reports what happens as events."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time

from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc
from nats.aio.msg import Msg

from shared.bus import BusUnavailable
from shared.config import Settings
from shared.contracts.control import (
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
    RelaySubscribe,
    RelaySubscribed,
    TrackExport,
    TrackExported,
    media_export_subject,
    parse_hostport,
    relay_subscribe_subject,
)
from shared.contracts.subjects import (
    event_type_filter,
    media_node_subject,
    room_data_subject,
    session_resume_subject,
    session_to_signal_subject,
    sessions_to_node_filter,
    telemetry_room_subject,
    usage_subject,
)
from shared.events import (
    Envelope,
    EventDecodeError,
    NodeDown,
    NodeHeartbeat,
    ParticipantActive,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    TrackKind,
    TrackMuted,
    TrackPayload,
    TrackPublished,
    TrackUnpublished,
)
from shared.ids import new_track_sid
from shared.room_feed import RoomFeed
from shared.service import Service
from shared.tasks import background

from .analytics import track_telemetry
from .commands import CommandError, apply_command
from .relay_link import RelayLink
from .remote import RemoteRoomSync, RemoteTrack
from .room import NodeRoom
from .session import RESYNC_FRAME, Session
from .track import PublishedTrack
from .webrtc import ice
from .webrtc.peer import MediaPeer

log = logging.getLogger(__name__)

CLOSE_HEADER = "Meshrtc-Close"
CONNECTION_HEADER = "Meshrtc-Connection"  # which signal WebSocket a down frame is for
ORIGIN_HEADER = "Meshrtc-Node"  # the node a room data packet comes from (it delivered it locally already)
RELIABLE_HEADER = "Meshrtc-Reliable"
USAGE_INTERVAL = 5.0  # seconds between usage samples
TELEMETRY_INTERVAL = 3.0  # seconds between track analytics samples
DRAIN_PACE = 1.0  # seconds between two participants moved off a draining node
RELAY_REFRESH = 1.0  # seconds between soft-state refreshes of relay subscriptions
RELAY_TTL = 5.0  # a subscription the relay hears nothing of for this long lapses
REASON_NAMES = {v: k for k, v in models.DisconnectReason.items()}


class MediaNode(Service):
    name = "media"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.rooms: dict[str, NodeRoom] = {}
        self.sessions: dict[str, Session] = {}
        self.feeds: dict[str, RoomFeed] = {}
        self.relay_link: RelayLink | None = None
        self._relay_wake = asyncio.Event()
        self._relay_subscribed: dict[str, RemoteTrack] = {}

    # ---- wiring ---------------------------------------------------------------------------
    async def on_start(self) -> None:
        assert self.bus
        ice.configure(host_addresses=self.settings.advertise_ips or None,
                      port_min=self.settings.rtc_port_min, port_max=self.settings.rtc_port_max)
        await self.bus.serve(media_node_subject(self.node_id, "open"), self._on_open)
        await self.bus.serve(media_node_subject(self.node_id, "close"), self._on_close)
        await self.bus.serve(media_node_subject(self.node_id, "resumable"), self._on_resumable)
        await self.bus.serve(media_node_subject(self.node_id, "stats"), self._on_stats)
        await self.bus.serve(media_node_subject(self.node_id, "ping"), self._on_ping)
        await self.bus.serve(media_node_subject(self.node_id, "drain"), self._on_drain)
        await self.bus.serve(media_node_subject(self.node_id, "command"), self._on_command, concurrency=8)
        self.relay_link = RelayLink(self.settings.bind_ip, self.settings.internal_ip)
        self.relay_link.start()
        await self.bus.serve(media_export_subject(self.node_id), self._on_export)
        background(self._relay_loop(), "media-relay")
        await self.bus.subscribe(sessions_to_node_filter(self.node_id), self._on_up)
        await self.bus.subscribe(session_resume_subject("*"), self._on_resume)
        await self.bus.subscribe(event_type_filter(self.settings.dc, NodeDown.TYPE), self._on_node_down)
        background(self._debug_loop(), "media-debug")
        background(self._room_loop(), "media-room-loop")
        background(self._usage_loop(), "media-usage")
        background(self._telemetry_loop(), "media-telemetry")

    async def _usage_loop(self) -> None:
        while True:
            await asyncio.sleep(USAGE_INTERVAL)
            for session in list(self.sessions.values()):
                self.report_usage(session)

    def report_usage(self, session: Session) -> None:
        """Publishes the session's usage since its last sample (one event per counter, each with
        its own id, so billing can count every byte exactly once)."""
        assert self.bus
        for sample in session.usage.samples(int(time.time() * 1000), session.usage_totals()):
            env = self.envelope(sample, room=session.room.name)
            self.bus.publish_event_nowait(env, subject=usage_subject(self.settings.dc, session.room.name))

    async def _telemetry_loop(self) -> None:
        while True:
            await asyncio.sleep(TELEMETRY_INTERVAL)
            self.report_telemetry()

    def report_telemetry(self) -> None:
        """Track analytics of every track hosted here, on TELEMETRY_<DC> (docs/analytics.md).
        Telemetry is the first thing dropped when the bus's outbox is full."""
        assert self.bus
        now = time.monotonic()
        for room in list(self.rooms.values()):
            for track in list(room.tracks.values()):
                if not isinstance(track, PublishedTrack):
                    continue  # tracks of other nodes are reported there
                try:
                    head, legs = track_telemetry(track, now)
                    for kind, payload in [("track", head), *(("subscription", leg) for leg in legs)]:
                        self.bus.publish_event_nowait(self.envelope(payload, room=room.name),
                                                      subject=telemetry_room_subject(self.settings.dc, kind, room.name))
                except BusUnavailable as exc:
                    log.warning("telemetry dropped: %s", exc)
                    return
                except Exception:
                    log.exception("track %s: telemetry failed", track.sid)

    async def _room_loop(self) -> None:
        """Speakers every 0.5 s, connection quality every 2 s, per hosted room."""
        tick = 0
        while True:
            await asyncio.sleep(0.5)
            tick += 1
            now = time.monotonic()
            for room in list(self.rooms.values()):
                try:
                    for track in room.remote.remote_tracks() if room.remote else ():
                        track.tick(now)  # follows the layers that arrive; its RTCP has nowhere to go
                    room.update_speakers()
                    if tick % 4 == 0:
                        room.update_quality()
                except Exception:
                    log.exception("room %s: periodic update failed", room.name)

    async def _debug_loop(self) -> None:
        """Forwarding state per track every few seconds, at DEBUG level (MESHRTC_LOG_LEVEL=DEBUG)."""
        while True:
            await asyncio.sleep(3)
            if not log.isEnabledFor(logging.DEBUG):
                continue
            for room in self.rooms.values():
                for track in room.tracks.values():
                    subs = [(s.session.identity, s.down.packets_sent if s.down else None,
                             s.down.needs_keyframe if s.down else None, s.down.current_layer if s.down else None,
                             s.down.target_layer if s.down else None) for s in track._subs.values()]
                    log.debug("track %s %s in=%d drop=%d ssrcs=%s rids=%s layers=%s subs=%s", track.sid, track.kind,
                             track.packets_in, track.dropped_in, track._layer_ssrc, track.rids, track.layers, subs)

    async def on_stop(self) -> None:
        await asyncio.gather(*(s.close(models.DisconnectReason.SERVER_SHUTDOWN,
                                       action=rtc.LeaveRequest.Action.RECONNECT) for s in list(self.sessions.values())),
                             return_exceptions=True)

    def metrics_snapshot(self) -> dict[str, float]:
        values = {"participants": len(self.sessions), "tracks": sum(len(s.tracks) for s in self.sessions.values()),
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
            room = self.rooms[spec.room.name] = NodeRoom(spec.room)
            self._attach_feed(room)
        elif room.spec.sid != spec.room.sid:
            # Two DCs created the room at once and the mesh settled on the other sid: same room,
            # its sessions here stay in it.
            room.spec = spec.room
        for old in [self.sessions.get(spec.replaced_sid), room.by_identity(spec.identity)]:
            if old is not None and not old.closed:
                await old.close(models.DisconnectReason.DUPLICATE_IDENTITY)
        session = Session(self, room, spec)
        self.sessions[session.sid] = session
        room.sessions[session.sid] = session
        self._publish_soon(ParticipantJoined(
            sid=session.sid, room_sid=spec.room.sid, identity=spec.identity, name=spec.name, metadata=spec.metadata,
            attributes=spec.attributes, kind=spec.kind, node=self.node_id, signal_node=spec.signal_node,
            project=spec.project, info=base64.b64encode(session.info.SerializeToString()).decode()), room.name)
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
        """A signal instance died without closing its sessions: they wait for a resume."""
        try:
            env = Envelope.from_json(msg.data)  # type: ignore[attr-defined]
        except EventDecodeError:
            return
        if not isinstance(env.payload, NodeDown) or env.payload.service != "signal":
            return
        for session in list(self.sessions.values()):
            if session.signal_node == env.payload.node_id and session.detachment is None:
                if session.can_resume:
                    session.detach(self.settings.resume_grace_ms / 1000)
                else:
                    await session.close(models.DisconnectReason.SIGNAL_CLOSE, send_leave=False)

    async def _on_command(self, data: bytes) -> bytes:
        command = decode_media_command(data)
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

    # ---- the room beyond this node ---------------------------------------------------------
    def _attach_feed(self, room: NodeRoom) -> None:
        """Other nodes' participants of the room come from its events (all DCs', via the replica
        stream): history first, then live."""
        assert self.bus and self.relay_link
        room.remote = RemoteRoomSync(room, self.node_id, self.relay_link, self._relay_wake.set)

        async def on_event(env: Envelope) -> None:
            if room.remote is not None:
                room.remote.apply(env)

        feed = self.feeds[room.name] = RoomFeed(self.bus, self.settings.dc, room.name, on_event)
        background(feed.start(), f"room-feed-{room.name}")
        background(self._subscribe_data(room), f"room-data-{room.name}")

    async def _subscribe_data(self, room: NodeRoom) -> None:
        assert self.bus

        async def on_data(msg: Msg) -> None:
            headers = msg.headers or {}
            if headers.get(ORIGIN_HEADER) == self.node_id or self.rooms.get(room.name) is not room:
                return
            try:
                packet = models.DataPacket.FromString(msg.data)
            except DecodeError:
                return
            destinations = list(packet.destination_identities) + list(packet.user.destination_identities)
            room.deliver_data(msg.data, headers.get(RELIABLE_HEADER) == "1", destinations,
                              exclude=packet.participant_sid)

        subscription = await self.bus.subscribe(room_data_subject(room.name), on_data)
        if self.rooms.get(room.name) is not room:
            await subscription.unsubscribe()
        else:
            room.data_subscription = subscription

    def forward_data(self, room: NodeRoom, payload: bytes, reliable: bool) -> None:
        """A data packet from a local sender, for the room's participants on other nodes."""
        assert self.bus
        headers = {ORIGIN_HEADER: self.node_id, RELIABLE_HEADER: "1" if reliable else "0"}
        background(self.bus.publish(room_data_subject(room.name), payload, headers=headers), "room-data-out")

    def _detach_feed(self, room: NodeRoom) -> None:
        feed = self.feeds.pop(room.name, None)
        if feed is not None:
            background(feed.stop(), f"room-feed-stop-{room.name}")
        if room.remote is not None:
            room.remote.close()
            room.remote = None
        if room.data_subscription is not None:
            background(room.data_subscription.unsubscribe(), f"room-data-stop-{room.name}")
            room.data_subscription = None

    async def _on_export(self, data: bytes) -> bytes:
        assert self.relay_link
        request = TrackExport.decode(data)  # a bad request is answered with the decode error
        deliver_to = parse_hostport(request.deliver_to)
        track = next((room.tracks[request.track_sid] for room in self.rooms.values()
                      if request.track_sid in room.tracks), None)
        if track is None or isinstance(track, RemoteTrack) or track.closed:
            raise LookupError(f"track {request.track_sid} is not published on this node")
        self.relay_link.export(track, deliver_to, request.ttl_s)
        return TrackExported(source=self.relay_link.address_text).encode()

    async def _relay_loop(self) -> None:
        """Keeps the relay subscriptions of remote tracks alive while local sessions watch them
        (soft state: refreshed every second, ended with ttl 0 when nobody watches)."""
        assert self.relay_link
        last_refresh = 0.0
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._relay_wake.wait(), RELAY_REFRESH)
            self._relay_wake.clear()
            now = time.monotonic()
            due = now - last_refresh >= RELAY_REFRESH
            if due:
                last_refresh = now
            try:
                await self._refresh_relay(now, due)
            except Exception:  # one bad round must not end the refreshes (subscriptions would lapse)
                log.exception("relay subscription refresh failed")

    async def _refresh_relay(self, now: float, due: bool) -> None:
        assert self.relay_link
        self.relay_link.sweep(now)
        calls = []
        for room in list(self.rooms.values()):
            for track in room.remote.remote_tracks() if room.remote else ():
                if track.wanted and (due or not track.relay_subscribed):
                    self._relay_subscribed[track.sid] = track
                    calls.append(self._relay_subscribe(track, RELAY_TTL))
        for sid, track in list(self._relay_subscribed.items()):
            if not track.wanted:
                del self._relay_subscribed[sid]
                calls.append(self._relay_subscribe(track, 0))
        if calls:
            await asyncio.gather(*calls)

    async def _relay_subscribe(self, track: RemoteTrack, ttl_s: float) -> None:
        assert self.bus and self.relay_link
        request = RelaySubscribe(room=track.room_name, project=track.project, track_sid=track.sid,
                                 origin_dc=track.origin_dc, origin_node=track.origin_node,
                                 subscriber_node=self.node_id, deliver_to=self.relay_link.address_text, ttl_s=ttl_s)
        try:
            answer = RelaySubscribed.decode(await self.bus.request(relay_subscribe_subject(self.settings.dc),
                                                                   request.encode(), timeout=RELAY_REFRESH))
            relay = parse_hostport(answer.relay_local)
        except Exception as exc:  # no relay answering is an outage to report, not a crash
            log.warning("relay subscribe for track %s failed: %r", track.sid, exc)
            track.relay_subscribed = False
            return
        track.relay_subscribed = ttl_s > 0
        track.relay = relay

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

    async def send_to_client(self, sid: str, data: bytes, close_reason: str | None, connection_id: str = "") -> None:
        assert self.bus
        headers = {CONNECTION_HEADER: connection_id} if connection_id else {}
        if close_reason is not None:
            headers[CLOSE_HEADER] = close_reason
        await self.bus.publish(session_to_signal_subject(sid), data, headers=headers or None)

    # ---- callbacks from sessions (reported as events) ---------------------------------------
    def new_track_sid(self, track_type: int) -> str:
        return new_track_sid("A" if track_type == models.TrackType.AUDIO else "V")

    def _publish_soon(self, payload: object, room: str) -> None:
        """Queued in the bus's ordered outbox: events of one node reach the stream in the order
        they happened (webhooks and the room fold depend on it), and survive a NATS restart."""
        assert self.bus
        self.bus.publish_event_nowait(self.envelope(payload, room=room))

    def participant_active(self, session: Session) -> None:
        self._publish_soon(ParticipantActive(sid=session.sid, identity=session.identity), session.room.name)

    def participant_updated(self, session: Session) -> None:
        info = session.info
        self._publish_soon(ParticipantUpdated(
            sid=session.sid, identity=session.identity, name=info.name, metadata=info.metadata,
            attributes=dict(info.attributes), info=base64.b64encode(info.SerializeToString()).decode()),
            session.room.name)

    def session_closed(self, session: Session, reason: int) -> None:
        self.sessions.pop(session.sid, None)
        room = session.room
        if not room.sessions and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            self._detach_feed(room)
        self._publish_soon(ParticipantLeft(sid=session.sid, identity=session.identity,
                                           reason=REASON_NAMES.get(reason, "UNKNOWN_REASON"),
                                           aborted=not session.active), room.name)

    def _track_payload(self, session: Session, track: PublishedTrack) -> TrackPayload:
        info = track.info
        return TrackPayload(
            sid=track.sid, participant_sid=session.sid, name=info.name,
            kind=TrackKind.AUDIO if info.type == models.TrackType.AUDIO else TrackKind.VIDEO,
            source=info.source, muted=info.muted, width=info.width, height=info.height, simulcast=info.simulcast,
            mime_type=info.mime_type, info=base64.b64encode(info.SerializeToString()).decode(), wire=track.wire)

    def track_published(self, session: Session, track: PublishedTrack) -> None:
        self._publish_soon(TrackPublished(track=self._track_payload(session, track), node=self.node_id),
                           session.room.name)

    def track_unpublished(self, session: Session, track: PublishedTrack) -> None:
        self._publish_soon(TrackUnpublished(sid=track.sid, participant_sid=session.sid), session.room.name)

    def track_muted(self, session: Session, track: PublishedTrack) -> None:
        self._publish_soon(TrackMuted(sid=track.sid, participant_sid=session.sid, muted=track.info.muted),
                           session.room.name)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0
