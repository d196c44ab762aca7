"""Participants and tracks of a room that live on other media nodes, folded from room events.

Pure: fed with event envelopes (from the DC's replica stream, so other DCs' events too), it
keeps each remote participant's LiveKit `ParticipantInfo` current and says what changed; the
node turns changes into ParticipantUpdates and relay subscriptions. Events of this node's own
sessions are ignored: the node knows those first-hand.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from enum import StrEnum

from google.protobuf.message import DecodeError
from livekit.protocol import models

from shared.events import (
    Envelope,
    ParticipantActive,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    TrackMuted,
    TrackPublished,
    TrackUnpublished,
    TrackWire,
)


class ChangeKind(StrEnum):
    JOINED = "joined"
    UPDATED = "updated"
    LEFT = "left"
    TRACK_ADDED = "track_added"
    TRACK_CHANGED = "track_changed"
    TRACK_REMOVED = "track_removed"


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    participant_sid: str
    track_sid: str = ""


@dataclass
class RemoteTrackState:
    info: models.TrackInfo
    wire: TrackWire


@dataclass
class RemoteParticipantState:
    info: models.ParticipantInfo
    node: str
    dc: str
    project: str
    tracks: dict[str, RemoteTrackState] = field(default_factory=dict)

    @property
    def sid(self) -> str:
        return self.info.sid

    def bump(self, seen_version: int = 0) -> None:
        """Versions only grow, whoever bumped last (the origin node or us)."""
        self.info.version = max(self.info.version + 1, seen_version)
        del self.info.tracks[:]
        self.info.tracks.extend(track.info for track in self.tracks.values())
        self.info.is_publisher = bool(self.tracks)


def _decode(message: models.ParticipantInfo | models.TrackInfo, text: str) -> bool:
    if not text:
        return False
    try:
        message.ParseFromString(base64.b64decode(text))
    except (binascii.Error, ValueError, DecodeError):
        return False
    return True


class RemoteRoster:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.participants: dict[str, RemoteParticipantState] = {}

    def by_identity(self, identity: str) -> RemoteParticipantState | None:
        return next((p for p in self.participants.values() if p.info.identity == identity), None)

    def apply(self, env: Envelope) -> list[Change]:
        payload = env.payload
        if isinstance(payload, ParticipantJoined):
            return self._joined(env, payload)
        if isinstance(payload, ParticipantLeft):
            return self.remove(payload.sid)
        if isinstance(payload, TrackPublished):
            participant = self.participants.get(payload.track.participant_sid)
            return self._track_published(participant, payload) if participant else []
        if isinstance(payload, ParticipantActive | ParticipantUpdated):
            participant = self.participants.get(payload.sid)
        elif isinstance(payload, TrackMuted | TrackUnpublished):
            participant = self.participants.get(payload.participant_sid)
        else:
            return []
        if participant is None:
            return []
        if isinstance(payload, ParticipantActive):
            participant.info.state = models.ParticipantInfo.State.ACTIVE
            participant.bump()
            return [Change(ChangeKind.UPDATED, participant.sid)]
        if isinstance(payload, ParticipantUpdated):
            return self._updated(participant, payload)
        if isinstance(payload, TrackMuted):
            track = participant.tracks.get(payload.sid)
            if track is None or track.info.muted == payload.muted:
                return []
            track.info.muted = payload.muted
            participant.bump()
            return [Change(ChangeKind.TRACK_CHANGED, participant.sid, payload.sid), Change(ChangeKind.UPDATED,
                                                                                          participant.sid)]
        if isinstance(payload, TrackUnpublished):
            if participant.tracks.pop(payload.sid, None) is None:
                return []
            participant.bump()
            return [Change(ChangeKind.TRACK_REMOVED, participant.sid, payload.sid),
                    Change(ChangeKind.UPDATED, participant.sid)]
        return []

    def remove(self, participant_sid: str) -> list[Change]:
        participant = self.participants.pop(participant_sid, None)
        if participant is None:
            return []
        changes = [Change(ChangeKind.TRACK_REMOVED, participant_sid, sid) for sid in participant.tracks]
        participant.tracks.clear()
        participant.info.state = models.ParticipantInfo.State.DISCONNECTED
        participant.bump()
        return [*changes, Change(ChangeKind.LEFT, participant_sid)]

    def _joined(self, env: Envelope, joined: ParticipantJoined) -> list[Change]:
        if joined.node == self.node_id or joined.sid in self.participants:
            return []
        info = models.ParticipantInfo()
        if not _decode(info, joined.info):
            info = models.ParticipantInfo(sid=joined.sid, identity=joined.identity, name=joined.name,
                                          metadata=joined.metadata, kind=joined.kind)  # type: ignore[arg-type]
            info.attributes.update(joined.attributes)
        info.state = models.ParticipantInfo.State.JOINED
        changes: list[Change] = []
        if (older := self.by_identity(joined.identity)) is not None:
            changes += self.remove(older.sid)  # the identity rejoined elsewhere: the old session is gone
        self.participants[joined.sid] = participant = RemoteParticipantState(info, joined.node, env.dc,
                                                                           joined.project)
        participant.bump()
        return [*changes, Change(ChangeKind.JOINED, joined.sid)]

    def _updated(self, participant: RemoteParticipantState, updated: ParticipantUpdated) -> list[Change]:
        fresh = models.ParticipantInfo()
        if _decode(fresh, updated.info):
            info = participant.info
            info.name, info.metadata = fresh.name, fresh.metadata
            info.attributes.clear()
            info.attributes.update(fresh.attributes)
            info.permission.CopyFrom(fresh.permission)
            participant.bump(fresh.version)
        else:
            if updated.name is not None:
                participant.info.name = updated.name
            if updated.metadata is not None:
                participant.info.metadata = updated.metadata
            if updated.attributes is not None:
                participant.info.attributes.clear()
                participant.info.attributes.update(updated.attributes)
            participant.bump()
        return [Change(ChangeKind.UPDATED, participant.sid)]

    def _track_published(self, participant: RemoteParticipantState, published: TrackPublished) -> list[Change]:
        track = published.track
        if track.wire is None or track.sid in participant.tracks:
            return []  # without its wire description a track cannot be forwarded here
        info = models.TrackInfo()
        if not _decode(info, track.info):
            info = models.TrackInfo(sid=track.sid, name=track.name, muted=track.muted, width=track.width,
                                    height=track.height, simulcast=track.simulcast, mime_type=track.mime_type,
                                    type=models.TrackType.AUDIO if track.kind == "audio" else models.TrackType.VIDEO)
        participant.tracks[track.sid] = RemoteTrackState(info, track.wire)
        participant.bump()
        return [Change(ChangeKind.TRACK_ADDED, participant.sid, track.sid), Change(ChangeKind.UPDATED,
                                                                                   participant.sid)]
