"""The part of a room hosted on this media node: its local sessions, what they publish, and the
participants of other nodes it hears of.

The room coordinates; its sessions report. A session tells the room that it published, muted,
changed, sent data or left (the `SessionRoom` port); the room decides who else hears of it
(broadcasts), who subscribes to what (auto-subscribe, subscription permissions) and what is
reported to the rest of the system (the `Reporter`). Tracks of other nodes arrive the same way
from `RemoteRoomSync` (the `RemoteRoomListener` port).
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from livekit.protocol import models, rtc
from nats.aio.subscription import Subscription

from shared.contracts.control import RoomSpec

from .data import RoutedData
from .protocol import room_proto
from .quality import quality_from_loss
from .remote import RemoteRoomSync, RemoteTrack
from .reporting import Reporter
from .session import Session
from .speakers import SpeakerDetector
from .track import PublishedTrack

RECENT_DEPARTURES = 256


class RoomHost(Protocol):
    """The node hosting the room: data for the room's other nodes, and sessions that ended."""

    def forward_data(self, room: NodeRoom, payload: bytes, reliable: bool) -> None: ...

    def session_closed(self, room: NodeRoom, session: Session) -> None: ...


class NodeRoom:
    def __init__(self, spec: RoomSpec, reporter: Reporter | None = None, host: RoomHost | None = None) -> None:
        self.spec = spec
        self.reporter = reporter
        self.host = host
        self.sessions: dict[str, Session] = {}
        self.tracks: dict[str, PublishedTrack] = {}
        self.speakers = SpeakerDetector()
        self.remote: RemoteRoomSync | None = None  # participants on other nodes, once the room feed runs
        self.data_subscription: Subscription | None = None  # data packets from the room's other nodes
        # The last departures told to the room, for a client whose signal frames may have been
        # lost in a bus outage (Session.resync); bounded, and harmless when the client knew.
        self.departures: deque[models.ParticipantInfo] = deque(maxlen=RECENT_DEPARTURES)

    @property
    def name(self) -> str:
        return self.spec.name

    def has_track(self, track_sid: str) -> bool:
        return track_sid in self.tracks

    def local_joined_at_ms(self, identity: str) -> int | None:
        session = self.by_identity(identity)
        return session.info.joined_at_ms if session is not None else None

    def visible_sessions(self, exclude: str = "") -> list[Session]:
        return [s for s in self.sessions.values() if s.sid != exclude and not s.permission.hidden]

    def by_identity(self, identity: str) -> Session | None:
        for session in self.sessions.values():
            if session.identity == identity:
                return session
        return None

    def remote_infos(self) -> list[models.ParticipantInfo]:
        return self.remote.infos() if self.remote is not None else []

    def proto(self) -> models.Room:
        remote = self.remote_infos()
        publishers = sum(1 for s in self.sessions.values() if s.published) + sum(1 for p in remote if p.is_publisher)
        return room_proto(self.spec, len(self.visible_sessions()) + len(remote), publishers)

    def deliver_data(self, payload: bytes, reliable: bool, destinations: tuple[str, ...] | list[str],
                     exclude: str = "") -> None:
        """A data packet to the local sessions it is for (its destinations, or everyone)."""
        wanted = set(destinations)
        for session in list(self.sessions.values()):
            if session.sid == exclude or (wanted and session.identity not in wanted):
                continue
            session.deliver_data(payload, reliable)

    def broadcast(self, response: rtc.SignalResponse, exclude: str = "") -> None:
        frame = response.SerializeToString()  # once for the room, not once per participant
        for session in list(self.sessions.values()):
            if session.sid != exclude:
                session.send_frame(frame)

    def broadcast_participant(self, info: models.ParticipantInfo, exclude: str = "", hidden: bool = False) -> None:
        """Tells everyone (the participant itself included, unless excluded) of a change."""
        if hidden:
            return
        if info.state == models.ParticipantInfo.State.DISCONNECTED:
            gone = models.ParticipantInfo()
            gone.CopyFrom(info)
            self.departures.append(gone)
        self.broadcast(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[info])), exclude)

    def recent_departures(self) -> dict[str, models.ParticipantInfo]:
        return {info.sid: info for info in self.departures}

    # ---- sessions report (SessionRoom) ------------------------------------------------------
    def join(self, session: Session) -> None:
        if self.remote is not None:
            self.remote.drop_identity(session.identity)
        self.sessions[session.sid] = session
        if self.reporter is not None:
            self.reporter.participant_joined(session)

    def others_for_join(self, session: Session) -> list[models.ParticipantInfo]:
        return [s.bump() for s in self.visible_sessions(exclude=session.sid)] + self.remote_infos()

    def others_now(self, session: Session) -> list[models.ParticipantInfo]:
        return [s.info for s in self.visible_sessions(exclude=session.sid)] + self.remote_infos()

    def auto_subscriptions(self, session: Session) -> set[str]:
        """The tracks a session that just became able to receive media gets without asking."""
        if not (session.spec.auto_subscribe and session.permission.can_subscribe):
            return set()
        return {sid for sid, track in self.tracks.items() if track.publisher is not session}

    def session_started(self, session: Session) -> None:
        self.broadcast_participant(session.info, exclude=session.sid, hidden=session.permission.hidden)

    def participant_changed(self, session: Session) -> None:
        self.broadcast_participant(session.bump(), hidden=session.permission.hidden)

    def session_active(self, session: Session) -> None:
        if self.reporter is not None:
            self.reporter.participant_active(session)

    def participant_updated(self, session: Session) -> None:
        if self.reporter is not None:
            self.reporter.participant_updated(session)

    def track_published(self, session: Session, track: PublishedTrack) -> None:
        self.tracks[track.sid] = track
        self.participant_changed(session)
        if self.reporter is not None:
            self.reporter.track_published(session, track)
        self._auto_subscribe(track, exclude=session.sid)

    def track_unpublished(self, session: Session, track: PublishedTrack) -> None:
        self.tracks.pop(track.sid, None)
        self._drop_subscribers(track)
        track.close()
        if self.reporter is not None:
            self.reporter.track_unpublished(session, track)

    def track_muted(self, session: Session, track: PublishedTrack) -> None:
        if self.reporter is not None:
            self.reporter.track_muted(session, track)

    def subscription_permission_changed(self, publisher: Session) -> None:
        """The publisher changed who may receive its tracks: the others who want one of them lose
        it or get it back, and are told."""
        for track in list(publisher.tracks.values()):
            for other in list(self.sessions.values()):
                if other is publisher or not other.wants(track.sid):
                    continue
                if publisher.allows(other, track.sid):
                    other.permission_restored(track)
                else:
                    other.permission_revoked(track)

    def data_received(self, session: Session, routed: RoutedData) -> None:
        self.deliver_data(routed.payload, routed.reliable, routed.destinations, exclude=session.sid)
        if self.remote is not None and self.remote.participants and self.host is not None:
            self.host.forward_data(self, routed.payload, routed.reliable)

    def session_departed(self, session: Session) -> None:
        """Gone from the room (its tracks already unpublished); its sockets close next."""
        self.sessions.pop(session.sid, None)
        self.broadcast_participant(session.bump(), exclude=session.sid, hidden=session.permission.hidden)

    def session_disconnected(self, session: Session) -> None:
        if self.reporter is not None:
            self.reporter.usage(session)  # the last interval, after the sockets are closed

    def session_closed(self, session: Session, reason: int) -> None:
        if self.host is not None:
            self.host.session_closed(self, session)
        if self.reporter is not None:
            self.reporter.participant_left(session, reason)

    def _drop_subscribers(self, track: PublishedTrack) -> None:
        for subscriber in list(track.subscribers()):
            if (session := self.sessions.get(subscriber.sid)) is not None:
                session.unsubscribe(track)

    def _auto_subscribe(self, track: PublishedTrack, exclude: str = "") -> None:
        for other in self.visible_sessions(exclude=exclude):
            if other.spec.auto_subscribe and other.permission.can_subscribe:
                other.subscribe(track)

    # ---- other nodes' participants (RemoteRoomListener) ------------------------------------
    def remote_participant_changed(self, info: models.ParticipantInfo) -> None:
        self.broadcast_participant(info)

    def remote_track_added(self, track: RemoteTrack) -> None:
        self.tracks[track.sid] = track
        self._auto_subscribe(track)

    def remote_track_removed(self, track: RemoteTrack) -> None:
        if self.tracks.get(track.sid) is track:
            del self.tracks[track.sid]
        self._drop_subscribers(track)

    # ---- periodic ---------------------------------------------------------------------------
    def update_speakers(self) -> None:
        levels: dict[str, float] = {}
        for track in self.tracks.values():
            if track.kind == "audio" and not track.info.muted:
                sid = track.publisher.sid
                levels[sid] = max(levels.get(sid, 0.0), track.audio_level)
        changes = self.speakers.update(levels)
        if changes:
            speakers = [models.SpeakerInfo(sid=c.participant_sid, level=c.level, active=c.active) for c in changes]
            self.broadcast(rtc.SignalResponse(speakers_changed=rtc.SpeakersChanged(speakers=speakers)))

    def update_quality(self) -> None:
        """Every participant learns everyone's connection quality (its own included): one message
        built and serialized once per room, O(N). Only a publisher whose own entry reads LOST
        gets a copy of its own (it must never see LOST for itself)."""
        updates: list[rtc.ConnectionQualityInfo] = []
        own: dict[str, tuple[int, rtc.ConnectionQualityInfo]] = {}
        for session in self.sessions.values():
            loss = max((track.loss() for track in session.tracks.values()), default=0.0)
            quality, score = quality_from_loss(loss)
            updates.append(rtc.ConnectionQualityInfo(participant_sid=session.sid, quality=quality,  # type: ignore[arg-type]
                                                     score=score))  # (stubs want the enum; protobuf takes its value)
            if session.published:
                own_quality, own_score = quality_from_loss(loss, publishing_self=True)
                if own_quality != quality:
                    own[session.sid] = (len(updates) - 1, rtc.ConnectionQualityInfo(
                        participant_sid=session.sid, quality=own_quality, score=own_score))  # type: ignore[arg-type]
        frame = _quality_frame(updates)
        for session in list(self.sessions.values()):
            mine = own.get(session.sid)
            if mine is None:
                session.send_frame(frame)
            else:
                index, entry = mine
                session.send_frame(_quality_frame([*updates[:index], entry, *updates[index + 1:]]))


def _quality_frame(updates: list[rtc.ConnectionQualityInfo]) -> bytes:
    return rtc.SignalResponse(connection_quality=rtc.ConnectionQualityUpdate(updates=updates)).SerializeToString()
