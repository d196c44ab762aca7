"""Admissions.decide: auto-create, max participants, duplicate identity, placement."""

from __future__ import annotations

import time

import pytest

from services.room.admission import (
    DEFAULT_DEPARTURE_TIMEOUT,
    DEFAULT_EMPTY_TIMEOUT,
    PENDING_TTL,
    Admissions,
)
from services.room.placement import NodePlacement
from services.room.state import RoomRegistry
from shared.contracts.control import JoinRequest
from shared.events import Envelope, EventPayload, NodeHeartbeat, ParticipantJoined, RoomCreated

DC = "dc1"
NOW = 100.0  # the admissions clock (monotonic in production)


def request(identity: str = "alice", room: str = "lobby", **kw: object) -> JoinRequest:
    return JoinRequest(project="APIkey", room=room, identity=identity, **kw)  # type: ignore[arg-type]


def apply(registry: RoomRegistry, payload: EventPayload, room: str = "lobby", ts: int | None = None) -> None:
    assert registry.apply(Envelope.new(payload, dc=DC, node="room-1", room=room, ts=ts))


def beat(placement: NodePlacement, node_id: str, *, dc: str = DC, load: float = 0.0, participants: int = 0,
         draining: bool = False) -> None:
    # Placement is asked with wall-clock time by Admissions.decide.
    placement.heartbeat(NodeHeartbeat(node_id=node_id, service="media", dc=dc, load=load,
                                      participants=participants, draining=draining), time.time())


def make(auto_create: bool = True, nodes: tuple[str, ...] = ("media-1",),
         capacity: int = 200) -> tuple[Admissions, RoomRegistry, NodePlacement]:
    registry, placement = RoomRegistry(), NodePlacement()
    for node in nodes:
        beat(placement, node)
    return Admissions(registry, placement, DC, capacity=capacity, auto_create=auto_create), registry, placement


def existing_room(registry: RoomRegistry, max_participants: int = 0, sid: str = "RM_existing",
                  name: str = "lobby") -> None:
    apply(registry, RoomCreated(sid=sid, name=name, max_participants=max_participants, empty_timeout=11,
                                departure_timeout=12, metadata="meta"), room=name, ts=1_700_000_000_000)


def join(registry: RoomRegistry, sid: str, identity: str, node: str = "media-1", room: str = "lobby") -> None:
    room_sid = registry.rooms[room].sid
    apply(registry, ParticipantJoined(sid=sid, room_sid=room_sid, identity=identity, node=node), room=room)


# --- auto-create -------------------------------------------------------------------------------


def test_auto_create_emits_room_created_with_token_room_config() -> None:
    adm, registry, _ = make()
    config = {"emptyTimeout": 60, "departureTimeout": 5, "maxParticipants": 4, "metadata": "hello"}
    decision = adm.decide(request(room_config=config), now=NOW)
    assert decision.admission.ok is True
    assert len(decision.events) == 1
    created = decision.events[0]
    assert isinstance(created, RoomCreated)
    assert created.name == "lobby"
    assert created.project == "APIkey"
    assert created.sid.startswith("RM_")
    assert (created.empty_timeout, created.departure_timeout, created.max_participants) == (60, 5, 4)
    assert created.metadata == "hello"
    spec = decision.admission.room
    assert spec is not None
    assert (spec.name, spec.sid) == ("lobby", created.sid)
    assert (spec.empty_timeout, spec.departure_timeout, spec.max_participants, spec.metadata) == (60, 5, 4, "hello")
    assert spec.creation_time_ms > 0
    assert decision.admission.node_id == "media-1"
    assert decision.admission.participant_sid.startswith("PA_")
    assert decision.admission.replaced_sid == ""
    # Pure: the caller applies the events, decide() does not.
    assert registry.rooms == {}


def test_auto_create_defaults_without_room_config() -> None:
    adm, _, _ = make()
    created = adm.decide(request(), now=NOW).events[0]
    assert isinstance(created, RoomCreated)
    assert (created.empty_timeout, created.departure_timeout, created.max_participants, created.metadata) == (
        DEFAULT_EMPTY_TIMEOUT, DEFAULT_DEPARTURE_TIMEOUT, 0, "")
    assert (DEFAULT_EMPTY_TIMEOUT, DEFAULT_DEPARTURE_TIMEOUT) == (300, 20)


def test_room_config_string_numbers_and_garbage() -> None:
    adm, _, _ = make()
    config = {"emptyTimeout": "42", "departureTimeout": "soon", "maxParticipants": None, "metadata": None}
    created = adm.decide(request(room_config=config), now=NOW).events[0]
    assert isinstance(created, RoomCreated)
    assert (created.empty_timeout, created.departure_timeout, created.max_participants, created.metadata) == (
        42, DEFAULT_DEPARTURE_TIMEOUT, 0, "")


def test_room_config_snake_case_keys_are_not_read() -> None:
    adm, _, _ = make()
    created = adm.decide(request(room_config={"empty_timeout": 1, "max_participants": 1}), now=NOW).events[0]
    assert isinstance(created, RoomCreated)
    assert (created.empty_timeout, created.max_participants) == (DEFAULT_EMPTY_TIMEOUT, 0)


def test_auto_create_max_participants_applies_to_the_first_joins() -> None:
    adm, registry, _ = make()
    first = adm.decide(request("a", room_config={"maxParticipants": 1}), now=NOW)
    for payload in first.events:
        apply(registry, payload)
    second = adm.decide(request("b", room_config={"maxParticipants": 1}), now=NOW)
    assert (second.admission.ok, second.admission.status, second.admission.error) == (False, 503, "room is full")
    assert second.events == []


def test_once_applied_the_created_room_is_reused() -> None:
    adm, registry, _ = make()
    first = adm.decide(request("a"), now=NOW)
    for payload in first.events:
        apply(registry, payload)
    second = adm.decide(request("b"), now=NOW)
    assert second.events == []
    assert second.admission.room is not None and first.admission.room is not None
    assert second.admission.room.sid == first.admission.room.sid


def test_auto_create_off_refuses_unknown_room() -> None:
    adm, _, _ = make(auto_create=False)
    decision = adm.decide(request(), now=NOW)
    assert decision.admission.ok is False
    assert decision.admission.status == 404
    assert decision.admission.error == "requested room does not exist"
    assert decision.events == []
    assert adm.pending == {}


def test_auto_create_off_admits_to_existing_room() -> None:
    adm, registry, _ = make(auto_create=False)
    existing_room(registry)
    decision = adm.decide(request(), now=NOW)
    assert decision.admission.ok is True
    assert decision.events == []
    spec = decision.admission.room
    assert spec is not None
    assert (spec.sid, spec.empty_timeout, spec.departure_timeout, spec.metadata, spec.creation_time_ms) == (
        "RM_existing", 11, 12, "meta", 1_700_000_000_000)


# --- max participants --------------------------------------------------------------------------


def test_max_participants_counts_pending_joins() -> None:
    adm, registry, _ = make()
    existing_room(registry, max_participants=2)
    join(registry, "PA_1", "one")
    ok = adm.decide(request("two"), now=NOW)
    assert ok.admission.ok is True
    assert set(adm.pending) == {ok.admission.participant_sid}
    full = adm.decide(request("three"), now=NOW)
    assert (full.admission.ok, full.admission.status, full.admission.error) == (False, 503, "room is full")
    assert set(adm.pending) == {ok.admission.participant_sid}  # refused joins leave no pending entry


def test_pending_join_becomes_participant_without_double_counting() -> None:
    adm, registry, _ = make()
    existing_room(registry, max_participants=2)
    first = adm.decide(request("one"), now=NOW)
    sid = first.admission.participant_sid
    join(registry, sid, "one")
    adm.joined(sid)
    assert adm.pending == {}
    assert adm.decide(request("two"), now=NOW).admission.ok is True
    assert adm.decide(request("three"), now=NOW).admission.error == "room is full"


def test_pending_in_other_rooms_do_not_count() -> None:
    adm, registry, _ = make()
    existing_room(registry, max_participants=1)
    existing_room(registry, sid="RM_other", name="other")
    for i in range(3):
        assert adm.decide(request(f"u{i}", room="other"), now=NOW).admission.ok is True
    assert adm.decide(request("alice"), now=NOW).admission.ok is True


def test_zero_max_participants_is_unlimited() -> None:
    adm, registry, _ = make()
    existing_room(registry, max_participants=0)
    for i in range(50):
        assert adm.decide(request(f"u{i}"), now=NOW).admission.ok is True


def test_pending_expires_after_ttl() -> None:
    adm, registry, _ = make()
    existing_room(registry, max_participants=1)
    assert adm.decide(request("one"), now=NOW).admission.ok is True
    # Still counted right at the TTL...
    assert adm.decide(request("two"), now=NOW + PENDING_TTL).admission.error == "room is full"
    # ...and gone just after.
    late = adm.decide(request("two"), now=NOW + PENDING_TTL + 0.01)
    assert late.admission.ok is True
    assert [p.identity for p in adm.pending.values()] == ["two"]
    assert PENDING_TTL == 15.0


# --- duplicate identity ------------------------------------------------------------------------


def test_duplicate_identity_replaces_existing_participant() -> None:
    adm, registry, _ = make()
    existing_room(registry)
    join(registry, "PA_old", "alice")
    decision = adm.decide(request("alice"), now=NOW)
    assert decision.admission.ok is True
    assert decision.admission.replaced_sid == "PA_old"
    assert decision.admission.participant_sid not in ("", "PA_old")


def test_duplicate_identity_not_blocked_by_max_participants() -> None:
    adm, registry, _ = make()
    existing_room(registry, max_participants=1)
    join(registry, "PA_old", "alice")
    assert adm.decide(request("bob"), now=NOW).admission.error == "room is full"
    decision = adm.decide(request("alice"), now=NOW)
    assert decision.admission.ok is True
    assert decision.admission.replaced_sid == "PA_old"


def test_duplicate_identity_replaces_pending_join() -> None:
    adm, registry, _ = make()
    existing_room(registry, max_participants=1)
    first = adm.decide(request("alice"), now=NOW)
    second = adm.decide(request("alice"), now=NOW + 1)
    assert second.admission.ok is True
    assert second.admission.replaced_sid == first.admission.participant_sid
    # The replaced pending join no longer counts; only the new one does.
    assert set(adm.pending) == {second.admission.participant_sid}
    assert adm.decide(request("bob"), now=NOW + 1).admission.error == "room is full"


def test_same_identity_pending_in_other_room_is_not_replaced() -> None:
    adm, registry, _ = make()
    existing_room(registry)
    existing_room(registry, sid="RM_other", name="other")
    elsewhere = adm.decide(request("alice", room="other"), now=NOW)
    here = adm.decide(request("alice"), now=NOW)
    assert here.admission.replaced_sid == ""
    assert set(adm.pending) == {elsewhere.admission.participant_sid, here.admission.participant_sid}


def test_expired_pending_join_is_not_replaced() -> None:
    adm, registry, _ = make()
    existing_room(registry)
    adm.decide(request("alice"), now=NOW)
    again = adm.decide(request("alice"), now=NOW + PENDING_TTL + 1)
    assert again.admission.replaced_sid == ""


# --- placement ---------------------------------------------------------------------------------


def test_no_media_node_is_503() -> None:
    adm, _, _ = make(nodes=())
    decision = adm.decide(request(), now=NOW)
    assert (decision.admission.ok, decision.admission.status, decision.admission.error) == (
        False, 503, "no media node available")
    assert decision.events == []
    assert adm.pending == {}


def test_only_draining_or_foreign_nodes_is_503() -> None:
    adm, _, placement = make(nodes=())
    beat(placement, "drain", draining=True)
    beat(placement, "far", dc="dc2")
    assert adm.decide(request(), now=NOW).admission.status == 503


def test_room_stays_on_its_node() -> None:
    adm, registry, placement = make(nodes=())
    beat(placement, "idle", load=0.0)
    beat(placement, "busy", load=0.5, participants=100)
    existing_room(registry)
    join(registry, "PA_1", "one", node="busy")
    assert adm.decide(request("two"), now=NOW).admission.node_id == "busy"


def test_full_room_node_spills_to_least_loaded() -> None:
    adm, registry, placement = make(nodes=(), capacity=2)
    beat(placement, "idle", load=0.0)
    beat(placement, "busy", load=1.0, participants=2)
    existing_room(registry)
    join(registry, "PA_1", "one", node="busy")
    assert adm.decide(request("two"), now=NOW).admission.node_id == "idle"


@pytest.mark.parametrize("max_participants", [1, 3])
def test_exactly_max_participants_are_admitted(max_participants: int) -> None:
    adm, registry, _ = make()
    existing_room(registry, max_participants=max_participants)
    results = [adm.decide(request(f"u{i}"), now=NOW).admission.ok for i in range(max_participants + 2)]
    assert results == [True] * max_participants + [False, False]
