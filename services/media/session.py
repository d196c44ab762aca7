"""One participant's LiveKit session on this media node.

Speaks the session protocol with the client (JoinResponse first, subscriber-primary offer,
answers echoing offer ids, trickle, track publication, mute, updates, data) and owns the
participant's two PeerConnections. Every PeerConnection operation runs under a deadline; any
failure closes the session unconditionally so nothing wedges.

What concerns other participants goes to the room through `SessionRoom`, which the room
implements: the session reports (published, muted, left, sent data) and the room decides who
else hears of it or subscribes. Frames for the client go out through a `ClientChannel`.
Negotiation and subscription state live in their own pure modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc
from livekit.protocol import room as room_pb

from shared.contracts.control import OpenSession, ResumeSession
from shared.contracts.media_commands import permission_spec
from shared.events import Direction
from shared.tasks import background

from . import protocol
from .data import DataSenderState, RoutedData, route_data
from .negotiation import PC_DEADLINE, SubscriberNegotiation
from .ports import Subscriber
from .publication import PendingTracks
from .resume import Detachment, ReliableLog, catch_up_update, receive_states, wanted_subscriptions
from .rtp import rtcp
from .signalling import SignalDispatch
from .subscriptions import Step, SubscriptionState, permission_allows
from .track import PublishedTrack, wire_from_media
from .usage import Counters, UsageMeter
from .webrtc.peer import MediaPeer

log = logging.getLogger(__name__)

ICE_DEADLINE = 20.0  # a session whose transports never connect is released
RESYNC_FRAME = b""  # queued in order with the client's frames (signal never forwards an empty one)
SOURCE_NAMES = {models.TrackSource.CAMERA: "camera", models.TrackSource.MICROPHONE: "microphone",
                models.TrackSource.SCREEN_SHARE: "screen_share",
                models.TrackSource.SCREEN_SHARE_AUDIO: "screen_share_audio"}


class ClientChannel(Protocol):
    """Where a session's frames for its client go (the signal instance serving the WebSocket)."""

    async def send_to_client(self, sid: str, data: bytes, close_reason: str | None,
                             connection_id: str = "") -> None: ...


class SessionRoom(Protocol):
    """What a session reads of its room and reports to it (NodeRoom implements it)."""

    tracks: dict[str, PublishedTrack]

    @property
    def name(self) -> str: ...

    def proto(self) -> models.Room: ...

    def others_for_join(self, session: Session) -> list[models.ParticipantInfo]: ...

    def others_now(self, session: Session) -> list[models.ParticipantInfo]: ...

    def recent_departures(self) -> dict[str, models.ParticipantInfo]: ...

    def auto_subscriptions(self, session: Session) -> set[str]: ...

    def session_started(self, session: Session) -> None: ...

    def participant_changed(self, session: Session) -> None: ...

    def session_active(self, session: Session) -> None: ...

    def participant_updated(self, session: Session) -> None: ...

    def track_published(self, session: Session, track: PublishedTrack) -> None: ...

    def track_unpublished(self, session: Session, track: PublishedTrack) -> None: ...

    def track_muted(self, session: Session, track: PublishedTrack) -> None: ...

    def subscription_permission_changed(self, session: Session) -> None: ...

    def data_received(self, session: Session, routed: RoutedData) -> None: ...

    def session_departed(self, session: Session) -> None: ...

    def session_disconnected(self, session: Session) -> None: ...

    def session_closed(self, session: Session, reason: int) -> None: ...


# Which method handles each kind of SignalRequest; signalling.IGNORED lists the rest.
REQUEST_HANDLERS = {
    "offer": "_on_offer", "answer": "_on_answer", "trickle": "_on_trickle", "add_track": "_on_add_track",
    "mute": "_on_mute", "subscription": "_on_subscription", "track_setting": "_on_track_setting",
    "leave": "_on_leave", "update_metadata": "_on_update_metadata",
    "subscription_permission": "_on_subscription_permission", "sync_state": "_on_sync_state",
}

PeerFactory = Callable[[str, str], MediaPeer]  # (role, label) -> PeerConnection wrapper


def _media_peer(role: str, label: str) -> MediaPeer:
    return MediaPeer(role=role, label=label)


class Session:
    def __init__(self, spec: OpenSession, room: SessionRoom, channel: ClientChannel, *, node_id: str,
                 region: str, new_track_sid: Callable[[int], str], make_peer: PeerFactory = _media_peer) -> None:
        self.room = room
        self.channel = channel
        self.spec = spec
        self.node_id = node_id
        self.region = region
        self.sid = spec.participant_sid
        self.identity = spec.identity
        self.permission = spec.permission
        self.info = models.ParticipantInfo(
            sid=self.sid, identity=spec.identity, name=spec.name, metadata=spec.metadata,
            state=models.ParticipantInfo.State.JOINING, joined_at=int(time.time()),
            joined_at_ms=int(time.time() * 1000), kind=spec.kind,  # type: ignore[arg-type]  # (stubs want the enum; protobuf takes its value)
            permission=protocol.permission_proto(spec.permission),
            region=region, client_protocol=spec.client.client_protocol,
        )
        self.info.attributes.update(spec.attributes)
        self.version = 0
        self.closed = False
        self.active = False
        self.tracks: dict[str, PublishedTrack] = {}  # published by this participant, by sid
        self._tracks_by_mid: dict[str, PublishedTrack] = {}
        self.pending = PendingTracks(new_track_sid)  # announced, not yet in an answered offer
        self.subs = SubscriptionState()
        self.permission_rules: rtc.SubscriptionPermission | None = None  # None: everyone may subscribe
        self.data_state = DataSenderState(self.sid, self.identity)
        # bytes/packets sent on subscriptions that ended, by track, so metering never goes back
        self.downstream_done: dict[str, tuple[int, int]] = {}
        self.usage = UsageMeter(spec.project, spec.room.name, spec.room.sid, self.sid, spec.identity,
                                started_ms=int(time.time() * 1000))
        self.publisher = make_peer("publisher", f"{self.sid}/pub")
        self.subscriber = make_peer("subscriber", f"{self.sid}/sub")
        self.negotiation = SubscriberNegotiation(
            lambda ice_restart: self.subscriber.create_offer(ice_restart=ice_restart), self.send, lambda: self.closed)
        self._dispatch = SignalDispatch({kind: getattr(self, name) for kind, name in REQUEST_HANDLERS.items()})
        # The signal WebSocket serving the session now; None while detached (resume.py).
        self.connection_id = spec.connection_id
        self.signal_node = spec.signal_node
        self.detachment: Detachment | None = None
        self.reliable_log = ReliableLog()
        self._grace: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[tuple[bytes, str | None, str]] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(), name=f"session-out-{self.sid}")
        # Large enough for a libwebrtc client's candidate burst (hundreds of trickles while an
        # offer is being answered); a client past this is not speaking the protocol.
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue(4096)
        self._reader = asyncio.create_task(self._read_loop(), name=f"session-in-{self.sid}")
        self._tasks: set[asyncio.Task[object]] = set()
        self._connect_watch: asyncio.Task[None] | None = None

    @property
    def is_local(self) -> bool:
        return True

    @property
    def subscriptions(self) -> set[str]:
        """Track sids this participant receives."""
        return self.subs.subscribed

    def wants(self, track_sid: str) -> bool:
        return track_sid in self.subs.wanted

    # ---- outbound frames ------------------------------------------------------------------
    def usage_totals(self) -> dict[tuple[str, Direction], Counters]:
        """Running wire counters of this participant, by (track sid or "", direction)."""
        totals = {
            ("", Direction.UPSTREAM): Counters(self.publisher.bytes_received + self.subscriber.bytes_received,
                                               self.publisher.packets_received + self.subscriber.packets_received),
            ("", Direction.DOWNSTREAM): Counters(self.publisher.bytes_sent + self.subscriber.bytes_sent,
                                                 self.publisher.packets_sent + self.subscriber.packets_sent),
        }
        for track in self.tracks.values():
            totals[(track.sid, Direction.UPSTREAM)] = Counters(track.bytes_in, track.packets_in)
        for track_sid, (sent_bytes, sent_packets) in self.downstream_done.items():
            totals[(track_sid, Direction.DOWNSTREAM)] = Counters(sent_bytes, sent_packets)
        for track in self.room.tracks.values():
            counters = track.sent_to(self)
            if counters is not None:
                done = totals.get((track.sid, Direction.DOWNSTREAM), Counters())
                totals[(track.sid, Direction.DOWNSTREAM)] = Counters(done.bytes + counters[0],
                                                                     done.packets + counters[1])
        return totals

    @property
    def published(self) -> bool:
        return bool(self.tracks)

    def send(self, response: rtc.SignalResponse) -> None:
        if self.closed:
            return
        if self.detachment is not None:
            self.detachment.missed(response)
            return
        self._outbox.put_nowait((response.SerializeToString(), None, self.connection_id))

    def send_frame(self, frame: bytes) -> None:
        """A serialized SignalResponse (room broadcasts serialize once for everyone)."""
        if self.closed:
            return
        if self.detachment is not None:
            self.detachment.missed(rtc.SignalResponse.FromString(frame))
            return
        self._outbox.put_nowait((frame, None, self.connection_id))

    def send_rtcp(self, packet: bytes) -> None:
        """RTCP for the publisher's client (keyframe requests of its tracks)."""
        self.publisher.send_rtcp(packet)

    async def _write_loop(self) -> None:
        while True:
            data, close_reason, connection_id = await self._outbox.get()
            await self.channel.send_to_client(self.sid, data, close_reason, connection_id)
            if close_reason is not None:
                return

    def spawn(self, coro: Awaitable[object], name: str) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self.closed:
            log.warning("session %s: %s failed: %r; closing", self.sid, task.get_name(), task.exception())
            background(self.close(models.DisconnectReason.STATE_MISMATCH))

    # ---- participant info -----------------------------------------------------------------
    def bump(self) -> models.ParticipantInfo:
        self.version += 1
        self.info.version = self.version
        del self.info.tracks[:]
        self.info.tracks.extend(track.info for track in self.tracks.values())
        self.info.is_publisher = bool(self.tracks)
        return self.info

    def announce(self) -> None:
        self.room.participant_changed(self)

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.publisher.on_data = self._on_data
        self.publisher.on_state = lambda state: self._on_transport_state("publisher", state)
        self.subscriber.on_state = lambda state: self._on_transport_state("subscriber", state)
        self.publisher.on_rtp_track = self.route_rtp
        self.publisher.on_rtcp = self._on_publisher_rtcp
        others = self.room.others_for_join(self)
        self.info.state = models.ParticipantInfo.State.JOINED
        self.send(protocol.join_response(self.room.proto(), self.bump(), others, self.node_id, self.region))
        self.room.session_started(self)
        for label, ordered in (("_reliable", True), ("_lossy", False)):
            self.subscriber.create_data_channel(label, ordered=ordered, max_retransmits=None if ordered else 0)
        # The first offer carries only the data channels: aiortc 1.16 stops the shared transport
        # when a BUNDLE group's first m-line is media and the SCTP transport comes later, so the
        # room's existing tracks follow in a second offer, once this one is answered.
        self.spawn(self.negotiation.negotiate(), "subscriber-offer")
        self._connect_watch = asyncio.create_task(self._watch_connect(), name=f"connect-watch-{self.sid}")
        self.spawn(self._publisher_rtcp_loop(), "publisher-rtcp")

    async def _publisher_rtcp_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for track in list(self.tracks.values()):
                for packet in track.tick(now):
                    self.publisher.send_rtcp(packet)

    async def _watch_connect(self) -> None:
        await asyncio.sleep(ICE_DEADLINE)
        if not self.active and not self.closed:
            log.info("session %s never connected its transports; releasing it", self.sid)
            await self.close(models.DisconnectReason.JOIN_FAILURE)

    def _on_transport_state(self, which: str, state: str) -> None:
        if state == "connected" and not self.active:
            self.active = True
            self.info.state = models.ParticipantInfo.State.ACTIVE
            self.announce()
            self.room.session_active(self)
        elif state in ("failed", "closed") and not self.closed:
            log.warning("session %s: %s PeerConnection %s; closing the session", self.sid, which, state)
            # LiveKit answers a failed transport with leave{RESUME}; this node cannot ICE-restart
            # yet, so the client is told to rejoin in full rather than to give up.
            background(self.close(models.DisconnectReason.CONNECTION_TIMEOUT,
                                  action=rtc.LeaveRequest.Action.RECONNECT))

    async def close(self, reason: int = models.DisconnectReason.CLIENT_INITIATED, send_leave: bool = True,
                    action: int = rtc.LeaveRequest.Action.DISCONNECT) -> None:
        if self.closed:
            return
        if send_leave and self.detachment is None:
            self._outbox.put_nowait((protocol.leave(reason, action).SerializeToString(), "leave", self.connection_id))
        self.closed = True
        for watch in (self._connect_watch, self._grace):
            if watch and watch is not asyncio.current_task():
                watch.cancel()  # (close() may run inside the watch itself)
        for task in list(self._tasks):
            task.cancel()
        if asyncio.current_task() is not self._reader:
            self._reader.cancel()
        for track in list(self.tracks.values()):
            self.unpublish(track, announce=False)
        for track in list(self.room.tracks.values()):
            self.unsubscribe(track, negotiate=False)  # keeps its sent bytes for the last usage sample
        self.info.state = models.ParticipantInfo.State.DISCONNECTED
        self.info.disconnect_reason = reason  # type: ignore[assignment]
        self.room.session_departed(self)
        await asyncio.gather(self.publisher.close(), self.subscriber.close(), return_exceptions=True)
        self.room.session_disconnected(self)  # the last usage interval, after the sockets are closed
        if send_leave and self.detachment is None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._writer), 2)
        self._writer.cancel()
        self.room.session_closed(self, reason)

    # ---- inbound frames -------------------------------------------------------------------
    def enqueue(self, data: bytes) -> None:
        """Frames are handled strictly in order (an offer before its trickles), one at a time."""
        if self.closed:
            return
        try:
            self._inbox.put_nowait(data)
        except asyncio.QueueFull:
            kinds: dict[str, int] = {}
            while not self._inbox.empty():
                try:
                    kind = rtc.SignalRequest.FromString(self._inbox.get_nowait()).WhichOneof("message") or "?"
                except DecodeError:
                    kind = "garbage"
                kinds[kind] = kinds.get(kind, 0) + 1
            log.warning("session %s floods the signal channel (%s pending); closing it", self.sid, kinds)
            background(self.close(models.DisconnectReason.STATE_MISMATCH))

    async def _read_loop(self) -> None:
        while True:
            data = await self._inbox.get()
            try:
                await self.handle_frame(data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("session %s: request failed (%r); closing", self.sid, exc)
                background(self.close(models.DisconnectReason.STATE_MISMATCH))
                return

    async def handle_frame(self, data: bytes) -> None:
        if self.closed:
            return
        if data == RESYNC_FRAME:
            self.resync()
            return
        await self._dispatch.dispatch(data)

    async def _on_offer(self, request: rtc.SignalRequest) -> None:
        offer = request.offer
        answer_sdp = await asyncio.wait_for(self.publisher.accept_offer(offer.sdp), PC_DEADLINE)
        self.send(rtc.SignalResponse(answer=rtc.SessionDescription(type="answer", sdp=answer_sdp, id=offer.id)))
        self._publish_from_sdp()

    async def _on_answer(self, request: rtc.SignalRequest) -> None:
        answer_id = request.answer.id
        if not self.negotiation.answers_outstanding(answer_id):
            # A second answer to an offer already answered (e.g. one we sent again after a bus
            # outage, in case it was lost), or an answer to an older offer: applying it would
            # fail and close a healthy session.
            outstanding = self.negotiation.outstanding
            log.info("session %s: answer %d ignored (offer outstanding: %s)", self.sid, answer_id,
                     outstanding.offer.id if outstanding else "none")
            return
        await asyncio.wait_for(self.subscriber.accept_answer(request.answer.sdp), PC_DEADLINE)
        log.debug("session %s: answer %d to offer %d applied", self.sid, answer_id, self.negotiation.offer_id)
        if self.negotiation.answered():
            wanted = self.subs.mark_ready() | self.room.auto_subscriptions(self)
            for sid in wanted:
                if (track := self.room.tracks.get(sid)) is not None and track.sid not in self.subscriptions:
                    self.subscribe(track, negotiate=False)
                    self.negotiation.note_change()
        for track in self.room.tracks.values():
            track.subscriber_ready(self)
        if self.negotiation.pending:
            self.spawn(self.negotiation.negotiate(requested=False), "subscriber-offer")

    async def _on_trickle(self, request: rtc.SignalRequest) -> None:
        trickle = request.trickle
        if not trickle.candidateInit:
            return
        try:
            candidate = json.loads(trickle.candidateInit)
        except json.JSONDecodeError:
            return
        if isinstance(candidate, dict):
            candidate = candidate.get("candidate")
        if not isinstance(candidate, str) or not candidate:
            return  # not a candidate: ignored, as LiveKit ignores it
        peer = self.publisher if trickle.target == rtc.SignalTarget.PUBLISHER else self.subscriber
        try:
            await peer.add_remote_candidate(candidate)
        except ValueError:
            log.debug("session %s: ignoring malformed candidate %r", self.sid, candidate[:100])

    async def _on_add_track(self, request: rtc.SignalRequest) -> None:
        add = request.add_track
        source = SOURCE_NAMES.get(add.source, "")
        allowed = self.permission.can_publish and (
            not self.permission.can_publish_sources or add.source in self.permission.can_publish_sources)
        if not allowed:
            self.send(rtc.SignalResponse(request_response=rtc.RequestResponse(
                reason=rtc.RequestResponse.Reason.NOT_ALLOWED, message=f"not allowed to publish {source or 'track'}")))
            return
        info = protocol.track_info_from_request(self.pending.announce(add), add)
        self.send(rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=add.cid, track=info)))

    async def _on_mute(self, request: rtc.SignalRequest) -> None:
        track = self.tracks.get(request.mute.sid)
        if track is None:
            return
        self.set_muted(track, request.mute.muted)

    def set_muted(self, track: PublishedTrack, muted: bool) -> None:
        if track.info.muted == muted:
            return
        track.info.muted = muted
        self.room.track_muted(self, track)
        self.announce()

    async def _on_subscription(self, request: rtc.SignalRequest) -> None:
        update = request.subscription
        sids = list(update.track_sids)
        for pt in update.participant_tracks:
            sids.extend(pt.track_sids)
        changed = False
        for sid in sids:
            track = self.room.tracks.get(sid)
            if track is None or track.publisher is self:
                continue
            if update.subscribe and sid not in self.subscriptions and self.permission.can_subscribe:
                self.subscribe(track, negotiate=False)
                changed = True
            elif not update.subscribe:
                changed = changed or sid in self.subscriptions
                self.unsubscribe(track, negotiate=False)
        if changed:
            self.spawn(self.negotiation.negotiate(), "subscriber-offer")

    async def _on_track_setting(self, request: rtc.SignalRequest) -> None:
        settings = request.track_setting
        for sid in settings.track_sids:
            track = self.room.tracks.get(sid)
            if track is not None and track.sid in self.subscriptions:
                track.update_settings(self, settings.disabled, settings.width, settings.height, settings.quality)
                state = rtc.StreamState.PAUSED if settings.disabled else rtc.StreamState.ACTIVE
                self.send(rtc.SignalResponse(stream_state_update=rtc.StreamStateUpdate(stream_states=[
                    rtc.StreamStateInfo(participant_sid=track.publisher.sid, track_sid=sid, state=state)])))

    async def _on_leave(self, request: rtc.SignalRequest) -> None:
        await self.close(models.DisconnectReason.CLIENT_INITIATED, send_leave=False)

    async def _on_update_metadata(self, request: rtc.SignalRequest) -> None:
        update = request.update_metadata
        if not self.permission.can_update_metadata:
            self.send(rtc.SignalResponse(request_response=rtc.RequestResponse(
                request_id=update.request_id, reason=rtc.RequestResponse.Reason.NOT_ALLOWED,
                message="does not have permission to update own metadata")))
            return
        if update.metadata:
            self.info.metadata = update.metadata
        if update.name:
            self.info.name = update.name
        for key, value in update.attributes.items():
            if value:
                self.info.attributes[key] = value
            else:
                self.info.attributes.pop(key, None)
        self.announce()
        self.room.participant_updated(self)
        self.send(rtc.SignalResponse(request_response=rtc.RequestResponse(
            request_id=update.request_id, reason=rtc.RequestResponse.Reason.OK)))

    def apply_update(self, request: room_pb.UpdateParticipantRequest) -> None:
        """RoomService.UpdateParticipant: metadata, name, attributes, permission. A revoked
        can_publish unpublishes every track; revoked can_subscribe drops subscriptions."""
        if request.metadata:
            self.info.metadata = request.metadata
        if request.name:
            self.info.name = request.name
        for key, value in request.attributes.items():
            if value:
                self.info.attributes[key] = value
            else:
                self.info.attributes.pop(key, None)
        if request.HasField("permission"):
            self.permission = permission_spec(request.permission)
            self.info.permission.CopyFrom(request.permission)
            if not self.permission.can_publish:
                for track in list(self.tracks.values()):
                    self.send(rtc.SignalResponse(track_unpublished=rtc.TrackUnpublishedResponse(track_sid=track.sid)))
                    self.unpublish(track, announce=False)
            if not self.permission.can_subscribe:
                for sid in list(self.subscriptions):
                    if (received := self.room.tracks.get(sid)) is not None:
                        self.unsubscribe(received)
        self.announce()
        self.room.participant_updated(self)

    def allows(self, subscriber: Subscriber, track_sid: str) -> bool:
        return permission_allows(self.permission_rules, subscriber.sid, subscriber.identity, track_sid)

    async def _on_subscription_permission(self, request: rtc.SignalRequest) -> None:
        """The publisher says who may receive its tracks; the room applies it to the others."""
        self.permission_rules = request.subscription_permission
        self.room.subscription_permission_changed(self)

    def permission_revoked(self, track: PublishedTrack) -> None:
        """The track's publisher no longer allows this session: it loses the track (still wanting it)."""
        if self.subs.revoke(track.sid):
            self._drop_leg(track, negotiate=True)
            self.tell_permission(track.publisher.sid, track.sid, False)

    def permission_restored(self, track: PublishedTrack) -> None:
        """Allowed again: a track it still wants comes back."""
        if self.subs.restore(track.sid):
            self.tell_permission(track.publisher.sid, track.sid, True)
            self.subscribe(track)

    def tell_permission(self, publisher_sid: str, track_sid: str, allowed: bool) -> None:
        self.send(rtc.SignalResponse(subscription_permission_update=rtc.SubscriptionPermissionUpdate(
            participant_sid=publisher_sid, track_sid=track_sid, allowed=allowed)))

    # ---- resume (resume.py) ----------------------------------------------------------------
    @property
    def can_resume(self) -> bool:
        """ICE connected once and both PeerConnections are alive to be ICE-restarted (as Go
        keeps a participant whose WebSocket closed only if ICE had connected)."""
        return (self.active and not self.closed and not self.publisher.closed and not self.subscriber.closed
                and self.subscriber.connection_state not in ("failed", "closed"))

    def detach(self, grace: float) -> None:
        """The WebSocket is gone: keep the session for `grace` seconds, waiting for a resume."""
        if self.closed or self.detachment is not None:
            return
        self.detachment = Detachment(since=time.monotonic())
        self._grace = asyncio.create_task(self._close_after(grace), name=f"resume-grace-{self.sid}")
        log.info("session %s detached from its signal connection; resumable for %.0f s", self.sid, grace)

    async def _close_after(self, grace: float) -> None:
        await asyncio.sleep(grace)
        if self.detachment is not None and not self.closed:
            log.info("session %s was not resumed within %.0f s; closing it", self.sid, grace)
            await self.close(models.DisconnectReason.SIGNAL_CLOSE, send_leave=False)

    def resume(self, request: ResumeSession) -> None:
        """Attach the session to the client's new WebSocket: ReconnectResponse first, then the
        room as it is now, then a subscriber offer with an ICE restart."""
        detachment, self.detachment = self.detachment, None
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self.connection_id = request.connection_id
        self.signal_node = request.signal_node
        self.send(protocol.reconnect_response(self.node_id, self.region, self.data_state.last_reliable_seq))
        self._send_room_state(detachment.departed if detachment else {})
        self.negotiation.forget_outstanding()  # an offer sent while detached was lost: this one replaces it
        self.spawn(self.negotiation.negotiate(ice_restart=True), "subscriber-ice-restart")
        log.info("session %s resumed (reason %d, %d frame(s) missed)", self.sid, request.reconnect_reason,
                 detachment.dropped_frames if detachment else 0)

    def _send_room_state(self, departed: dict[str, models.ParticipantInfo]) -> None:
        """Everyone as they are now (and who left, as far as the client may not know), then the room."""
        current = self.room.others_now(self)
        current.append(self.info)
        self.send(catch_up_update(current, departed))
        self.send(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=self.room.proto())))

    def resync(self) -> None:
        """The bus between this node and the client's signal instance was away: frames sent to
        the client meanwhile may be lost (core NATS keeps nothing for a subscriber that is not
        back yet). Bring it up to date from state, as after a resume; its transports never left."""
        self._send_room_state(self.room.recent_departures())
        if self.negotiation.outstanding is not None:
            # Still unanswered: it may have been lost with the bus. Sent again as it was; if the
            # client had it after all, its second answer is ignored (_on_answer).
            self.send(self.negotiation.outstanding)
        log.info("session %s resynchronised after a bus outage", self.sid)

    async def _on_sync_state(self, request: rtc.SignalRequest) -> None:
        """The client's view after a resume: its subscription choices are applied again, and
        reliable data it did not receive is sent once more (receivers drop duplicates by sequence)."""
        sync = request.sync_state
        subscribe, sids = wanted_subscriptions(sync)
        changed = False
        for sid in sids:
            track = self.room.tracks.get(sid)
            if track is None or track.publisher is self:
                continue
            if subscribe and sid not in self.subscriptions and self.permission.can_subscribe:
                self.subscribe(track, negotiate=False)
                changed = True
            elif not subscribe and sid in self.subscriptions:
                self.unsubscribe(track, negotiate=False)
                changed = True
        unknown = [t.cid for t in sync.publish_tracks if t.track.sid and t.track.sid not in self.tracks]
        if unknown:
            log.warning("session %s: client resumed with tracks this node does not have: %s", self.sid, unknown)
        for payload in self.reliable_log.missed(receive_states(sync)):
            self.subscriber.send_data("_reliable", payload)
        if changed:
            self.spawn(self.negotiation.negotiate(), "subscriber-offer")

    # ---- publishing -----------------------------------------------------------------------
    def _publish_from_sdp(self) -> None:
        """Tracks become published once an answered offer carries their m-line (publication.py)."""
        published = {t.cid for t in self.tracks.values()}
        for publication in self.pending.match(self.publisher.incoming_media(), published):
            info = protocol.track_info_from_request(publication.sid, publication.request)
            media = publication.media
            info.mid = media.mid or ""
            info.mime_type = media.mime_type
            track = PublishedTrack(self, info, publication.request.cid, wire_from_media(media), feedback=self,
                                   project=self.spec.project, room_name=self.spec.room.name,
                                   room_sid=self.spec.room.sid)
            self.tracks[track.sid] = track
            self._tracks_by_mid[track.mid] = track
            self.room.track_published(self, track)

    def route_rtp(self, mid: str, rid: str, packet: bytes) -> None:
        track = self._tracks_by_mid.get(mid)
        if track is not None:
            track.on_rtp(rid, packet)

    def _on_publisher_rtcp(self, data: bytes) -> None:
        try:
            packets = rtcp.parse_compound(data)
        except ValueError:
            return
        for packet in packets:
            if isinstance(packet, rtcp.SenderReport):
                for track in self._tracks_by_mid.values():
                    if track.owns_ssrc(packet.ssrc):
                        track.on_publisher_rtcp(packet)

    def unpublish(self, track: PublishedTrack, announce: bool = True) -> None:
        self.tracks.pop(track.sid, None)
        self._tracks_by_mid.pop(track.mid, None)
        self.room.track_unpublished(self, track)
        if announce:
            self.announce()

    # ---- subscribing ----------------------------------------------------------------------
    def subscribe(self, track: PublishedTrack, negotiate: bool = True) -> None:
        if self.closed:
            return
        step = self.subs.subscribe(track.sid, track.publisher.allows(self, track.sid))
        if step is Step.TELL_DENIED:
            self.tell_permission(track.publisher.sid, track.sid, False)
        elif step is Step.ADD_LEG:
            track.add_subscriber(self)
            if negotiate:
                self.spawn(self.negotiation.negotiate(), "subscriber-offer")

    def unsubscribe(self, track: PublishedTrack, negotiate: bool = True, keep_wanted: bool = False) -> None:
        if self.subs.unsubscribe(track.sid, keep_wanted):
            self._drop_leg(track, negotiate)

    def _drop_leg(self, track: PublishedTrack, negotiate: bool) -> None:
        if (sent := track.sent_to(self)) is not None:
            done = self.downstream_done.get(track.sid, (0, 0))
            self.downstream_done[track.sid] = (done[0] + sent[0], done[1] + sent[1])
        track.remove_subscriber(self)
        if negotiate and not self.closed:
            self.spawn(self.negotiation.negotiate(), "subscriber-offer")

    # ---- data -----------------------------------------------------------------------------
    def _on_data(self, label: str, data: bytes) -> None:
        if label not in ("_reliable", "_lossy"):
            return
        routed = route_data(self.data_state, self.permission.can_publish_data, data, label == "_reliable")
        if routed is not None:
            self.room.data_received(self, routed)

    def deliver_data(self, payload: bytes, reliable: bool) -> None:
        if self.closed:
            return
        if reliable:
            self.reliable_log.record(payload)
        self.subscriber.send_data("_reliable" if reliable else "_lossy", payload)

