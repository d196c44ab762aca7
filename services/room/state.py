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
        room = self.rooms.get(env.room or "")
        if isinstance(payload, RoomCreated):
            self._created(env, payload)
        elif isinstance(payload, RoomFinished):
            self._finished(room, payload)
        elif room is None:
            if env.room is not None:
                self._orphans.append(env)
        elif isinstance(payload, RoomMetadataUpdated):
            if env.id > room.metadata_event_id:
                room.metadata, room.metadata_event_id = payload.metadata, env.id
        elif isinstance(payload, ParticipantJoined):
            if payload.room_sid in self.finished_sids:
                return  # a session of an incarnation that has ended reported in late
            room.participants[payload.sid] = ParticipantState(
                sid=payload.sid, identity=payload.identity, name=payload.name, metadata=payload.metadata,
                attributes=dict(payload.attributes), node=payload.node, signal_node=payload.signal_node,
                joined_at_ms=env.ts, kind=payload.kind, info=payload.info, dc=env.dc, room_sid=payload.room_sid,
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

    def _created(self, env: Envelope, payload: RoomCreated) -> None:
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

    def _finished(self, room: RoomState | None, payload: RoomFinished) -> None:
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
