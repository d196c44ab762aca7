"""The part of a room hosted on this media node: its local sessions and what they publish."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from livekit.protocol import models, rtc

from shared.contracts.control import RoomSpec

from .protocol import room_proto
from .quality import quality_from_loss
from .speakers import SpeakerDetector

if TYPE_CHECKING:
    from nats.aio.subscription import Subscription

    from .remote import RemoteRoomSync
    from .session import Session
    from .track import PublishedTrack

RECENT_DEPARTURES = 256


class NodeRoom:
    def __init__(self, spec: RoomSpec) -> None:
        self.spec = spec
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
            updates.append(rtc.ConnectionQualityInfo(participant_sid=session.sid, quality=quality, score=score))
            if session.published:
                own_quality, own_score = quality_from_loss(loss, publishing_self=True)
                if own_quality != quality:
                    own[session.sid] = (len(updates) - 1, rtc.ConnectionQualityInfo(
                        participant_sid=session.sid, quality=own_quality, score=own_score))
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
