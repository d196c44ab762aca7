"""Room state as a fold of events. Pure: `apply(envelope)` is the only way state changes, so a
restarted room service rebuilds exactly the same state by replaying the same events.

The events come from every DC (REPLICA_<DC>), in an order that differs between DCs (per-origin
order is kept, nothing more), so the fold is written to converge on the same state whatever the
interleaving (docs/multi-dc.md, "Rooms across datacenters"):

* A room created concurrently in two DCs (two `RoomCreated`, two sids) is one room: every
  creation is an *incarnation*, and the one with the smallest event id wins (its sid, config,
  creation time and DC, the room's *owner DC*). Participants joined under a losing sid stay.
* `RoomFinished` ends the incarnations it names (`sid` + `merged_sids`) and drops their
  participants; a room whose incarnations are all finished is gone.
* Room metadata updated in two DCs at once: the update with the larger event id wins.
* An event of a room this DC does not know yet (another DC's join that overtook the creation it
  followed, coming from a third DC) waits and is folded in when the room is created. A `RoomCreated` of a finished
  sid arriving late is ignored, and a re-creation that overtook the previous incarnation's
  `RoomFinished` survives it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    TrackPayload,
    TrackPublished,
    TrackTelemetry,
    TrackUnpublished,
    UsageRollup,
    UsageSample,
)

ORPHAN_LIMIT = 10_000


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
    dc: str = ""  # the DC whose media node hosts it (origin of its participant.joined)
    room_sid: str = ""  # the room incarnation it joined


@dataclass(frozen=True)
class Incarnation:
    """One `RoomCreated` of a room name: its event id decides which incarnation wins."""

    event_id: str
    ts: int
    dc: str
    created: RoomCreated


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
    origin_dc: str = ""  # DC of the winning RoomCreated: it runs the room's lifecycle
    incarnations: dict[str, Incarnation] = field(default_factory=dict)  # sid -> creation
    metadata_event_id: str = ""  # the room.metadata_updated in force: the latest id wins in every DC

    @property
    def merged_sids(self) -> list[str]:
        """Sids of concurrent creations folded into this room (not the winning one)."""
        return sorted(sid for sid in self.incarnations if sid != self.sid)

    def adopt_winner(self) -> None:
        """Take sid and config from the incarnation with the smallest event id."""
        winner = min(self.incarnations.values(), key=lambda inc: inc.event_id)
        created = winner.created
        self.sid, self.created_at_ms, self.origin_dc = created.sid, winner.ts, winner.dc
        self.empty_timeout, self.departure_timeout = created.empty_timeout, created.departure_timeout
        self.max_participants, self.project = created.max_participants, created.project
        if not self.metadata_event_id:
            self.metadata = created.metadata

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
        self.finished_sids: set[str] = set()  # room incarnations that ended
        # Events of a room not known (yet): another DC's join can reach us before the creation it
        # followed; they are folded in when the room is created. Bounded: the oldest go first.
        self._orphans: deque[Envelope] = deque(maxlen=ORPHAN_LIMIT)

    def apply(self, env: Envelope) -> bool:
        """Folds one event in; returns False when it was already applied."""
        if env.id in self.applied:
            return False
        self.applied.add(env.id)
        self._fold(env)
        return True

    def _fold(self, env: Envelope) -> None:
        payload = env.payload
        handler = ROOM_STATE_FOLD.handler(payload)
        if handler is None:
            return
        room = self.rooms.get(env.room or "")
        if room is None and type(payload) not in _ROOMLESS_TYPES:
            if env.room is not None:
                self._orphans.append(env)
            return
        handler(self, env, payload, room)

    def _metadata_updated(self, env: Envelope, payload: RoomMetadataUpdated, room: RoomState) -> None:
        if env.id > room.metadata_event_id:
            room.metadata, room.metadata_event_id = payload.metadata, env.id

    def _joined(self, env: Envelope, payload: ParticipantJoined, room: RoomState) -> None:
        if payload.room_sid in self.finished_sids:
            return  # a session of an incarnation that has ended reported in late
        room.participants[payload.sid] = ParticipantState(
            sid=payload.sid, identity=payload.identity, name=payload.name, metadata=payload.metadata,
            attributes=dict(payload.attributes), node=payload.node, signal_node=payload.signal_node,
            joined_at_ms=env.ts, kind=payload.kind, info=payload.info, dc=env.dc, room_sid=payload.room_sid,
        )

    def _active(self, env: Envelope, payload: ParticipantActive, room: RoomState) -> None:
        if participant := room.participants.get(payload.sid):
            participant.active = True

    def _updated(self, env: Envelope, payload: ParticipantUpdated, room: RoomState) -> None:
        if participant := room.participants.get(payload.sid):
            if payload.name is not None:
                participant.name = payload.name
            if payload.metadata is not None:
                participant.metadata = payload.metadata
            if payload.attributes is not None:
                participant.attributes = dict(payload.attributes)
            if payload.info:
                participant.info = payload.info

    def _left(self, env: Envelope, payload: ParticipantLeft, room: RoomState) -> None:
        if room.participants.pop(payload.sid, None) is not None:
            room.last_departure_ms = env.ts

    def _track_published(self, env: Envelope, payload: TrackPublished, room: RoomState) -> None:
        if participant := room.participants.get(payload.track.participant_sid):
            participant.tracks[payload.track.sid] = payload.track

    def _track_muted(self, env: Envelope, payload: TrackMuted, room: RoomState) -> None:
        participant = room.participants.get(payload.participant_sid)
        if participant and (track := participant.tracks.get(payload.sid)):
            participant.tracks[payload.sid] = track.model_copy(update={"muted": payload.muted})

    def _track_unpublished(self, env: Envelope, payload: TrackUnpublished, room: RoomState) -> None:
        if participant := room.participants.get(payload.participant_sid):
            participant.tracks.pop(payload.sid, None)

    def _created(self, env: Envelope, payload: RoomCreated, _room: RoomState | None) -> None:
        if payload.sid in self.finished_sids:
            return  # a late copy of an incarnation that already ended
        incarnation = Incarnation(env.id, env.ts, env.dc, payload)
        room = self.rooms.get(payload.name)
        new = room is None
        if room is None:
            room = self.rooms[payload.name] = RoomState(name=payload.name, sid=payload.sid, created_at_ms=env.ts)
        if payload.sid in room.incarnations:
            return
        room.incarnations[payload.sid] = incarnation
        room.adopt_winner()
        if new:
            self._adopt_orphans(payload.name)

    def _adopt_orphans(self, name: str) -> None:
        waiting = [env for env in self._orphans if env.room == name]
        if not waiting:
            return
        kept = [env for env in self._orphans if env.room != name]
        self._orphans.clear()
        self._orphans.extend(kept)
        for env in waiting:
            self._fold(env)

    def _finished(self, env: Envelope, payload: RoomFinished, room: RoomState | None) -> None:
        ended = {payload.sid, *payload.merged_sids}
        self.finished_sids |= ended
        if room is None or not ended & set(room.incarnations):
            return  # an incarnation this room never had (an older one): nothing to end here
        for sid in ended:
            room.incarnations.pop(sid, None)
        if not room.incarnations:
            del self.rooms[room.name]
            return
        # a re-creation overtook this RoomFinished: it lives on, without the ended one's participants
        room.participants = {sid: p for sid, p in room.participants.items() if p.room_sid not in ended}
        room.adopt_winner()


# Handlers take (registry, envelope, payload, room); room is None only for _ROOMLESS_TYPES.
RoomStateHandler = Callable[[RoomRegistry, Envelope, Any, Any], None]

ROOM_STATE_FOLD: FoldDispatch[RoomStateHandler] = FoldDispatch(
    name="services.room.state:RoomRegistry",
    handlers={
        RoomCreated: RoomRegistry._created,
        RoomFinished: RoomRegistry._finished,
        RoomMetadataUpdated: RoomRegistry._metadata_updated,
        ParticipantJoined: RoomRegistry._joined,
        ParticipantActive: RoomRegistry._active,
        ParticipantUpdated: RoomRegistry._updated,
        ParticipantLeft: RoomRegistry._left,
        TrackPublished: RoomRegistry._track_published,
        TrackMuted: RoomRegistry._track_muted,
        TrackUnpublished: RoomRegistry._track_unpublished,
    },
    ignored={
        ParticipantEvictRequested: "a command to the hosting DC (room app); the participant leaves by participant.left",
        NodeUp: "node liveness is placement's concern, not the room's",
        NodeHeartbeat: "node load is placement's concern, not the room's",
        NodeDown: "a dead node's participants leave the state through the participant.left events it causes",
        LinkStateChanged: "relay mesh health, no room in it",
        UsageSample: "metering, folded by billing",
        UsageRollup: "metering, folded by billing",
        TrackTelemetry: "analytics, stored by billing's telemetry store",
        SubscriptionTelemetry: "analytics, stored by billing's telemetry store",
    },
)

# Events that create or end a room act with or without a room of that name; every other
# handled event needs its room, and waits as an orphan until it is created.
_ROOMLESS_TYPES: frozenset[type] = frozenset({RoomCreated, RoomFinished})
