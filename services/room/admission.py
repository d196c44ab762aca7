"""Admission of a join: room auto-creation, max participants, duplicate identity, placement.
Pure decisions; the caller publishes the events it returns.

Across DCs: the room state holds every DC's participants, so max_participants counts them all
(pending joins only of this DC); a duplicate identity hosted by another DC is evicted by that DC,
asked with a `participant.evict_requested` event; placement only picks this DC's nodes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shared.contracts.control import JoinAdmission, JoinRequest, RoomSpec
from shared.events import EventPayload, ParticipantEvictRequested, RoomCreated
from shared.ids import new_participant_sid, new_room_sid

from .placement import NodePlacement
from .state import RoomRegistry, RoomState

DEFAULT_EMPTY_TIMEOUT = 300
DEFAULT_DEPARTURE_TIMEOUT = 20
PENDING_TTL = 15.0  # seconds an admitted participant counts before its session reports in


@dataclass
class PendingJoin:
    room: str
    identity: str
    expires: float


@dataclass
class AdmissionDecision:
    admission: JoinAdmission
    events: list[EventPayload] = field(default_factory=list)


def room_spec(room: RoomState) -> RoomSpec:
    return RoomSpec(name=room.name, sid=room.sid, empty_timeout=room.empty_timeout,
                    departure_timeout=room.departure_timeout, max_participants=room.max_participants,
                    metadata=room.metadata, creation_time_ms=room.created_at_ms)


def _config_int(config: dict[str, object], key: str, default: int) -> int:
    value = config.get(key)
    try:
        return int(value) if value is not None else default  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return default


class Admissions:
    def __init__(self, registry: RoomRegistry, placement: NodePlacement, dc: str, capacity: int = 200,
                 auto_create: bool = True) -> None:
        self.registry = registry
        self.placement = placement
        self.dc = dc
        self.capacity = capacity
        self.auto_create = auto_create
        self.pending: dict[str, PendingJoin] = {}

    def _prune(self, now: float) -> None:
        for sid in [sid for sid, p in self.pending.items() if p.expires < now]:
            del self.pending[sid]

    def has_pending(self, room: str) -> bool:
        return any(p.room == room for p in self.pending.values())

    def joined(self, participant_sid: str) -> None:
        self.pending.pop(participant_sid, None)

    def decide(self, request: JoinRequest, now: float | None = None) -> AdmissionDecision:
        now = time.monotonic() if now is None else now
        self._prune(now)
        events: list[EventPayload] = []
        room = self.registry.rooms.get(request.room)
        if room is None:
            if not self.auto_create:
                return AdmissionDecision(JoinAdmission(ok=False, status=404, error="requested room does not exist"))
            config = request.room_config
            created = RoomCreated(
                sid=new_room_sid(), name=request.room, project=request.project,
                empty_timeout=_config_int(config, "emptyTimeout", DEFAULT_EMPTY_TIMEOUT),
                departure_timeout=_config_int(config, "departureTimeout", DEFAULT_DEPARTURE_TIMEOUT),
                max_participants=_config_int(config, "maxParticipants", 0),
                metadata=str(config.get("metadata", "") or ""),
            )
            events.append(created)
            room = RoomState(name=created.name, sid=created.sid, created_at_ms=int(time.time() * 1000),
                             empty_timeout=created.empty_timeout, departure_timeout=created.departure_timeout,
                             max_participants=created.max_participants, metadata=created.metadata,
                             project=created.project)

        existing = room.by_identity(request.identity)
        pending_same = [sid for sid, p in self.pending.items()
                        if p.room == request.room and p.identity == request.identity]
        replaced_sid = existing.sid if existing else (pending_same[0] if pending_same else "")
        if room.max_participants and not replaced_sid:
            pending_here = sum(1 for p in self.pending.values() if p.room == request.room)
            if len(room.participants) + pending_here >= room.max_participants:
                return AdmissionDecision(JoinAdmission(ok=False, status=503, error="room is full"))

        prefer = room.nodes()
        node = self.placement.choose(self.dc, time.time(), prefer=prefer, capacity=self.capacity)
        if node is None:
            return AdmissionDecision(JoinAdmission(ok=False, status=503, error="no media node available"))
        for sid in pending_same:
            self.pending.pop(sid, None)
        if existing is not None and existing.dc and existing.dc != self.dc:
            events.append(ParticipantEvictRequested(sid=existing.sid, identity=existing.identity, dc=existing.dc))
        participant_sid = new_participant_sid()
        self.pending[participant_sid] = PendingJoin(request.room, request.identity, now + PENDING_TTL)
        return AdmissionDecision(
            JoinAdmission(ok=True, room=room_spec(room), participant_sid=participant_sid, node_id=node,
                          replaced_sid=replaced_sid),
            events,
        )
