"""Admissions in a room that spans DCs: every DC's participants count, a duplicate identity in
another DC is evicted through an event, placement stays in this DC."""

from __future__ import annotations

import time

from services.room.admission import Admissions
from services.room.placement import NodePlacement
from services.room.state import RoomRegistry
from shared.contracts.control import JoinRequest
from shared.events import (
    Envelope,
    EventPayload,
    NodeHeartbeat,
    ParticipantEvictRequested,
    ParticipantJoined,
    RoomCreated,
)

NOW = 100.0


def apply(registry: RoomRegistry, payload: EventPayload, dc: str) -> None:
    assert registry.apply(Envelope.new(payload, dc=dc, node=f"room-{dc}", room="lobby"))


def make(max_participants: int = 0) -> tuple[Admissions, RoomRegistry]:
    registry, placement = RoomRegistry(), NodePlacement()
    for node, dc in (("media-dc1", "dc1"), ("media-dc2", "dc2")):
        placement.heartbeat(NodeHeartbeat(node_id=node, service="media", dc=dc), time.time())
    apply(registry, RoomCreated(sid="RM_1", name="lobby", max_participants=max_participants), "dc1")
    return Admissions(registry, placement, "dc2"), registry


def joined_in(registry: RoomRegistry, dc: str, sid: str, identity: str) -> None:
    apply(registry, ParticipantJoined(sid=sid, room_sid="RM_1", identity=identity, node=f"media-{dc}"), dc)


def test_participants_of_every_dc_count_against_max_participants() -> None:
    adm, registry = make(max_participants=2)
    joined_in(registry, "dc1", "PA_a", "alice")
    joined_in(registry, "dc1", "PA_b", "bob")
    decision = adm.decide(JoinRequest(project="p", room="lobby", identity="carol"), now=NOW)
    assert (decision.admission.ok, decision.admission.error) == (False, "room is full")


def test_duplicate_identity_in_another_dc_asks_that_dc_to_evict_it() -> None:
    adm, registry = make(max_participants=1)
    joined_in(registry, "dc1", "PA_old", "alice")
    decision = adm.decide(JoinRequest(project="p", room="lobby", identity="alice"), now=NOW)
    assert decision.admission.ok is True
    assert decision.admission.node_id == "media-dc2"  # placed in the DC it connected to
    assert decision.events == [ParticipantEvictRequested(sid="PA_old", identity="alice", dc="dc1")]


def test_duplicate_identity_in_this_dc_is_replaced_locally_without_an_event() -> None:
    adm, registry = make()
    joined_in(registry, "dc2", "PA_old", "alice")
    decision = adm.decide(JoinRequest(project="p", room="lobby", identity="alice"), now=NOW)
    assert decision.admission.replaced_sid == "PA_old"
    assert decision.events == []
