"""Participants and tracks of a room that live on other media nodes, folded from room events.

Pure: fed with event envelopes (from the DC's replica stream, so other DCs' events too), it
keeps each remote participant's LiveKit `ParticipantInfo` current and says what changed; the
node turns changes into ParticipantUpdates and relay subscriptions. Events of this node's own
sessions are ignored: the node knows those first-hand.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from google.protobuf.message import DecodeError
from livekit.protocol import models

from shared.event_fold import FoldDispatch
from shared.events import (
    Envelope,
    LinkStateChanged,
    NodeDown,
    NodeHeartbeat,
    NodeUp,
    ParticipantActive,
    ParticipantEvictRequested,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    RoomCreated,
    RoomFinished,
    RoomMetadataUpdated,
    SubscriptionTelemetry,
    TrackMuted,
    TrackPublished,
    TrackTelemetry,
    TrackUnpublished,
    TrackWire,
    UsageRollup,
    UsageSample,
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
        handler = ROSTER_FOLD.handler(env.payload)
        return handler(self, env, env.payload) if handler is not None else []

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

    def _left(self, env: Envelope, left: ParticipantLeft) -> list[Change]:
        return self.remove(left.sid)

    def _active(self, env: Envelope, active: ParticipantActive) -> list[Change]:
        participant = self.participants.get(active.sid)
        if participant is None:
            return []
        participant.info.state = models.ParticipantInfo.State.ACTIVE
        participant.bump()
        return [Change(ChangeKind.UPDATED, participant.sid)]

    def _updated(self, env: Envelope, updated: ParticipantUpdated) -> list[Change]:
        participant = self.participants.get(updated.sid)
        if participant is None:
            return []
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

    def _track_published(self, env: Envelope, published: TrackPublished) -> list[Change]:
        track = published.track
        participant = self.participants.get(track.participant_sid)
        if participant is None or track.wire is None or track.sid in participant.tracks:
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

    def _track_muted(self, env: Envelope, muted: TrackMuted) -> list[Change]:
        participant = self.participants.get(muted.participant_sid)
        track = participant.tracks.get(muted.sid) if participant is not None else None
        if participant is None or track is None or track.info.muted == muted.muted:
            return []
        track.info.muted = muted.muted
        participant.bump()
        return [Change(ChangeKind.TRACK_CHANGED, participant.sid, muted.sid), Change(ChangeKind.UPDATED,
                                                                                    participant.sid)]

    def _track_unpublished(self, env: Envelope, unpublished: TrackUnpublished) -> list[Change]:
        participant = self.participants.get(unpublished.participant_sid)
        if participant is None or participant.tracks.pop(unpublished.sid, None) is None:
            return []
        participant.bump()
        return [Change(ChangeKind.TRACK_REMOVED, participant.sid, unpublished.sid),
                Change(ChangeKind.UPDATED, participant.sid)]


RosterHandler = Callable[[RemoteRoster, Envelope, Any], list[Change]]

ROSTER_FOLD: FoldDispatch[RosterHandler] = FoldDispatch(
    name="services.media.roster:RemoteRoster",
    handlers={
        ParticipantJoined: RemoteRoster._joined,
        ParticipantActive: RemoteRoster._active,
        ParticipantUpdated: RemoteRoster._updated,
        ParticipantLeft: RemoteRoster._left,
        TrackPublished: RemoteRoster._track_published,
        TrackMuted: RemoteRoster._track_muted,
        TrackUnpublished: RemoteRoster._track_unpublished,
    },
    ignored={
        RoomCreated: "a node's rooms come from the sessions it hosts, not from this event",
        RoomMetadataUpdated: "room metadata reaches clients through the node's own room, not the roster",
        RoomFinished: "the room service closes the room's sessions by command; each leaves by participant.left",
        ParticipantEvictRequested: "the evicted session leaves by participant.left, which the roster folds",
        NodeUp: "a node holds no participants until they join",
        NodeHeartbeat: "liveness only; says nothing about participants",
        NodeDown: "a dead node's participants leave by the participant.left the room service emits",
        LinkStateChanged: "relay mesh health; remote tracks keep their state across a link change",
        UsageSample: "metering, folded by billing",
        UsageRollup: "metering, folded by billing",
        TrackTelemetry: "analytics, stored by billing's telemetry store",
        SubscriptionTelemetry: "analytics, stored by billing's telemetry store",
    },
)
