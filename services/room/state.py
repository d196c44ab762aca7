"""Room state as a fold of events. Pure: `apply(envelope)` is the only way state changes, so a
restarted room service rebuilds exactly the same state by replaying the same events."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.events import (
    Envelope,
    ParticipantActive,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    RoomCreated,
    RoomFinished,
    RoomMetadataUpdated,
    TrackMuted,
    TrackPayload,
    TrackPublished,
    TrackUnpublished,
)


@dataclass
class ParticipantState:
    sid: str
    identity: str
    name: str
    metadata: str
    attributes: dict[str, str]
    node: str
    signal_node: str
    joined_at_ms: int
    kind: int = 0
    active: bool = False
    info: str = ""
    tracks: dict[str, TrackPayload] = field(default_factory=dict)


@dataclass
class RoomState:
    name: str
    sid: str
    created_at_ms: int
    empty_timeout: int = 0
    departure_timeout: int = 0
    max_participants: int = 0
    metadata: str = ""
    project: str = ""
    participants: dict[str, ParticipantState] = field(default_factory=dict)
    last_departure_ms: int = 0

    def by_identity(self, identity: str) -> ParticipantState | None:
        for participant in self.participants.values():
            if participant.identity == identity:
                return participant
        return None

    def nodes(self) -> set[str]:
        return {p.node for p in self.participants.values()}


class RoomRegistry:
    def __init__(self) -> None:
        self.rooms: dict[str, RoomState] = {}
        self.applied: set[str] = set()  # event ids folded in, so a redelivery is a no-op

    def apply(self, env: Envelope) -> bool:
        """Folds one event in; returns False when it was already applied."""
        if env.id in self.applied:
            return False
        self.applied.add(env.id)
        payload = env.payload
        room = self.rooms.get(env.room or "")
        if isinstance(payload, RoomCreated):
            if room is None or room.sid != payload.sid:
                self.rooms[payload.name] = RoomState(
                    name=payload.name, sid=payload.sid, created_at_ms=env.ts,
                    empty_timeout=payload.empty_timeout, departure_timeout=payload.departure_timeout,
                    max_participants=payload.max_participants, metadata=payload.metadata, project=payload.project,
                )
        elif room is None:
            return True
        elif isinstance(payload, RoomMetadataUpdated):
            room.metadata = payload.metadata
        elif isinstance(payload, RoomFinished):
            if payload.sid == room.sid:
                del self.rooms[room.name]
        elif isinstance(payload, ParticipantJoined):
            room.participants[payload.sid] = ParticipantState(
                sid=payload.sid, identity=payload.identity, name=payload.name, metadata=payload.metadata,
                attributes=dict(payload.attributes), node=payload.node, signal_node=payload.signal_node,
                joined_at_ms=env.ts, kind=payload.kind, info=payload.info,
            )
        elif isinstance(payload, ParticipantActive):
            if participant := room.participants.get(payload.sid):
                participant.active = True
        elif isinstance(payload, ParticipantUpdated):
            if participant := room.participants.get(payload.sid):
                if payload.name is not None:
                    participant.name = payload.name
                if payload.metadata is not None:
                    participant.metadata = payload.metadata
                if payload.attributes is not None:
                    participant.attributes = dict(payload.attributes)
                if payload.info:
                    participant.info = payload.info
        elif isinstance(payload, ParticipantLeft):
            if room.participants.pop(payload.sid, None) is not None:
                room.last_departure_ms = env.ts
        elif isinstance(payload, TrackPublished):
            if participant := room.participants.get(payload.track.participant_sid):
                participant.tracks[payload.track.sid] = payload.track
        elif isinstance(payload, TrackMuted):
            participant = room.participants.get(payload.participant_sid)
            if participant and (track := participant.tracks.get(payload.sid)):
                participant.tracks[payload.sid] = track.model_copy(update={"muted": payload.muted})
        elif isinstance(payload, TrackUnpublished):
            if participant := room.participants.get(payload.participant_sid):
                participant.tracks.pop(payload.sid, None)
        return True
