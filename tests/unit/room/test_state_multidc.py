"""RoomRegistry fed by several DCs: whatever the interleaving of the DCs' event streams (each
keeps its own order), every DC's fold ends in the same room state."""

from __future__ import annotations

import itertools
import random

from services.room.state import RoomRegistry
from shared.events import (
    Envelope,
    EventPayload,
    ParticipantJoined,
    ParticipantLeft,
    RoomCreated,
    RoomFinished,
    RoomMetadataUpdated,
)

ROOM = "standup"


class Origin:
    """Events of one DC, with ids that sort in creation time as real event ids do."""

    def __init__(self, dc: str) -> None:
        self.dc = dc
        self.events: list[Envelope] = []

    def emit(self, payload: EventPayload, at: int) -> Envelope:
        event = Envelope.new(payload, dc=self.dc, node=f"n-{self.dc}", room=ROOM, ts=at,
                             event_id=f"{at:010d}-{self.dc}")
        self.events.append(event)
        return event


def joined(sid: str, room_sid: str, dc: str, identity: str = "") -> ParticipantJoined:
    return ParticipantJoined(sid=sid, room_sid=room_sid, identity=identity or sid, node=f"media-{dc}")


def interleavings(*streams: list[Envelope], samples: int = 300) -> list[list[Envelope]]:
    """Random merges that keep each stream's order (all of them when there are few)."""
    total = sum(len(s) for s in streams)
    rng = random.Random(7)
    out = []
    for _ in range(samples):
        cursors = [0] * len(streams)
        merged = []
        while len(merged) < total:
            choices = [i for i, s in enumerate(streams) if cursors[i] < len(s)]
            pick = rng.choice(choices)
            merged.append(streams[pick][cursors[pick]])
            cursors[pick] += 1
        out.append(merged)
    out.append([e for s in streams for e in s])
    out.append([e for s in reversed(streams) for e in s])
    return out


def fold(events: list[Envelope]) -> dict[str, tuple[str, str, list[str]]]:
    registry = RoomRegistry()
    for event in events:
        registry.apply(event)
    return {name: (room.sid, room.origin_dc, sorted(room.participants)) for name, room in registry.rooms.items()}


def test_concurrent_creation_converges_on_the_earliest_creation() -> None:
    dc1, dc2 = Origin("dc1"), Origin("dc2")
    dc1.emit(RoomCreated(sid="RM_a", name=ROOM, max_participants=5), at=100)
    dc1.emit(joined("PA_1", "RM_a", "dc1"), at=110)
    dc2.emit(RoomCreated(sid="RM_b", name=ROOM, max_participants=9), at=105)
    dc2.emit(joined("PA_2", "RM_b", "dc2"), at=112)
    states = {repr(fold(order)) for order in interleavings(dc1.events, dc2.events)}
    assert states == {repr({ROOM: ("RM_a", "dc1", ["PA_1", "PA_2"])})}
    registry = RoomRegistry()
    for event in dc2.events + dc1.events:
        registry.apply(event)
    room = registry.rooms[ROOM]
    assert (room.max_participants, room.merged_sids, room.created_at_ms) == (5, ["RM_b"], 100)


def test_finishing_a_merged_room_ends_every_incarnation() -> None:
    dc1, dc2 = Origin("dc1"), Origin("dc2")
    dc1.emit(RoomCreated(sid="RM_a", name=ROOM), at=100)
    dc2.emit(RoomCreated(sid="RM_b", name=ROOM), at=105)
    dc2.emit(joined("PA_2", "RM_b", "dc2"), at=112)
    dc2.emit(ParticipantLeft(sid="PA_2", identity="PA_2"), at=150)
    dc1.emit(RoomFinished(sid="RM_a", merged_sids=["RM_b"]), at=200)  # dc1 saw all of dc2's events
    for order in interleavings(dc1.events, dc2.events):
        assert fold(order) == {}, [e.type for e in order]


def test_a_recreation_that_overtakes_the_old_finish_survives_it() -> None:
    """dc2 re-creates the room after seeing dc1 finish it; a third DC may get dc2's creation
    before dc1's RoomCreated/RoomFinished and must still end with dc2's room."""
    dc1, dc2 = Origin("dc1"), Origin("dc2")
    dc1.emit(RoomCreated(sid="RM_a", name=ROOM), at=100)
    dc1.emit(joined("PA_1", "RM_a", "dc1"), at=110)
    dc1.emit(ParticipantLeft(sid="PA_1", identity="PA_1"), at=120)
    dc1.emit(RoomFinished(sid="RM_a"), at=200)
    dc2.emit(RoomCreated(sid="RM_c", name=ROOM), at=300)
    dc2.emit(joined("PA_3", "RM_c", "dc2"), at=310)
    for order in interleavings(dc1.events, dc2.events):
        assert fold(order) == {ROOM: ("RM_c", "dc2", ["PA_3"])}, [e.type for e in order]


def test_late_copy_of_a_finished_creation_is_ignored() -> None:
    registry = RoomRegistry()
    dc1 = Origin("dc1")
    created = dc1.emit(RoomCreated(sid="RM_a", name=ROOM), at=100)
    registry.apply(dc1.emit(RoomFinished(sid="RM_a"), at=200))  # (from a DC that saw the creation)
    assert registry.apply(created) is True
    assert registry.rooms == {}


def test_three_dcs_every_order_of_creations_converges() -> None:
    origins = [Origin(dc) for dc in ("dc1", "dc2", "dc3")]
    for offset, origin in enumerate(origins):
        origin.emit(RoomCreated(sid=f"RM_{origin.dc}", name=ROOM), at=100 + (2 - offset))
        origin.emit(joined(f"PA_{origin.dc}", f"RM_{origin.dc}", origin.dc), at=200)
    results = set()
    for perm in itertools.permutations(origins):
        for order in interleavings(*(o.events for o in perm), samples=20):
            results.add(repr(fold(order)))
    assert results == {repr({ROOM: ("RM_dc3", "dc3", ["PA_dc1", "PA_dc2", "PA_dc3"])})}


def test_concurrent_metadata_updates_converge_on_the_latest() -> None:
    dc1, dc2 = Origin("dc1"), Origin("dc2")
    dc1.emit(RoomCreated(sid="RM_a", name=ROOM, metadata="initial"), at=100)
    dc1.emit(RoomMetadataUpdated(sid="RM_a", metadata="from dc1"), at=200)
    dc2.emit(RoomMetadataUpdated(sid="RM_a", metadata="from dc2"), at=300)
    results = set()
    for order in interleavings(dc1.events, dc2.events):
        registry = RoomRegistry()
        for event in order:
            registry.apply(event)
        results.add(registry.rooms[ROOM].metadata)
    assert results == {"from dc2"}  # also where dc2's update reached the fold before the room


def test_a_join_that_overtakes_the_room_creation_from_a_third_dc_is_kept() -> None:
    """dc3 folds dc1's creation and dc2's join (made after dc2 saw the creation) in any order."""
    dc1, dc2 = Origin("dc1"), Origin("dc2")
    dc1.emit(RoomCreated(sid="RM_a", name=ROOM), at=100)
    dc1.emit(joined("PA_1", "RM_a", "dc1"), at=110)
    dc2.emit(joined("PA_2", "RM_a", "dc2"), at=120)
    dc2.emit(ParticipantLeft(sid="PA_2", identity="PA_2"), at=130)
    dc2.emit(joined("PA_3", "RM_a", "dc2"), at=140)
    for order in interleavings(dc1.events, dc2.events):
        assert fold(order) == {ROOM: ("RM_a", "dc1", ["PA_1", "PA_3"])}, [e.type for e in order]


def test_late_events_of_a_finished_room_do_not_leak_into_its_next_incarnation() -> None:
    dc1 = Origin("dc1")
    dc1.emit(RoomCreated(sid="RM_a", name=ROOM), at=100)
    dc1.emit(RoomFinished(sid="RM_a"), at=200)
    dc1.emit(joined("PA_late", "RM_a", "dc1"), at=210)  # a session that reported in after the finish
    dc1.emit(RoomCreated(sid="RM_b", name=ROOM), at=300)
    dc1.emit(joined("PA_later", "RM_a", "dc1"), at=310)  # even later, into the new incarnation's time
    assert fold(dc1.events) == {ROOM: ("RM_b", "dc1", [])}
