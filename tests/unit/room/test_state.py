"""RoomRegistry: room state is exactly the fold of its events."""

from __future__ import annotations

import pytest

from services.room.state import RoomRegistry
from shared.events import (
    Envelope,
    EventPayload,
    NodeHeartbeat,
    ParticipantActive,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    RoomCreated,
    RoomFinished,
    RoomMetadataUpdated,
    TrackKind,
    TrackMuted,
    TrackPayload,
    TrackPublished,
    TrackUnpublished,
)

ROOM = "lobby"
ROOM_SID = "RM_one"


def env(payload: EventPayload, *, room: str | None = ROOM, ts: int = 1_000, event_id: str | None = None) -> Envelope:
    return Envelope.new(payload, dc="dc1", node="room-1", room=room, ts=ts, event_id=event_id)


def created(sid: str = ROOM_SID, name: str = ROOM, **kw: object) -> RoomCreated:
    return RoomCreated(sid=sid, name=name, **kw)  # type: ignore[arg-type]


def joined(sid: str = "PA_a", identity: str = "alice", **kw: object) -> ParticipantJoined:
    fields: dict[str, object] = {"room_sid": ROOM_SID, "node": "media-1"}
    fields.update(kw)
    return ParticipantJoined(sid=sid, identity=identity, **fields)  # type: ignore[arg-type]


def track(sid: str = "TR_a", participant_sid: str = "PA_a", **kw: object) -> TrackPayload:
    fields: dict[str, object] = {"kind": TrackKind.AUDIO}
    fields.update(kw)
    return TrackPayload(sid=sid, participant_sid=participant_sid, **fields)  # type: ignore[arg-type]


@pytest.fixture
def reg() -> RoomRegistry:
    registry = RoomRegistry()
    assert registry.apply(env(created(empty_timeout=30, departure_timeout=7, max_participants=3,
                                      metadata="m", project="proj"), ts=500))
    return registry


def test_room_created_records_config_and_time(reg: RoomRegistry) -> None:
    room = reg.rooms[ROOM]
    assert (room.name, room.sid, room.created_at_ms) == (ROOM, ROOM_SID, 500)
    assert (room.empty_timeout, room.departure_timeout, room.max_participants) == (30, 7, 3)
    assert (room.metadata, room.project) == ("m", "proj")
    assert room.participants == {}
    assert room.last_departure_ms == 0


def test_apply_is_idempotent_by_event_id(reg: RoomRegistry) -> None:
    e = env(joined(), event_id="EV1")
    assert reg.apply(e) is True
    reg.apply(env(ParticipantLeft(sid="PA_a", identity="alice"), ts=2_000))
    assert reg.rooms[ROOM].participants == {}
    # Redelivery of the joined event must not bring the participant back.
    assert reg.apply(e) is False
    assert reg.rooms[ROOM].participants == {}
    # Same id, different payload: still a duplicate.
    assert reg.apply(env(joined(sid="PA_b", identity="bob"), event_id="EV1")) is False
    assert reg.rooms[ROOM].participants == {}


def test_recreate_with_same_sid_keeps_state(reg: RoomRegistry) -> None:
    reg.apply(env(joined()))
    assert reg.apply(env(created(max_participants=99), ts=9_999)) is True
    room = reg.rooms[ROOM]
    assert room.max_participants == 3
    assert room.created_at_ms == 500
    assert set(room.participants) == {"PA_a"}


def test_creation_with_a_later_id_and_new_sid_is_folded_into_the_room(reg: RoomRegistry) -> None:
    """A second RoomCreated with another sid is a concurrent creation (another DC): the earlier
    creation keeps the room, its participants stay (docs/multi-dc.md)."""
    reg.apply(env(joined()))
    reg.apply(env(created(sid="RM_two", max_participants=9), ts=7_000))
    room = reg.rooms[ROOM]
    assert (room.sid, room.max_participants, room.created_at_ms) == (ROOM_SID, 3, 500)
    assert room.merged_sids == ["RM_two"]
    assert set(room.participants) == {"PA_a"}


def test_room_finished_removes_room(reg: RoomRegistry) -> None:
    assert reg.apply(env(RoomFinished(sid=ROOM_SID))) is True
    assert ROOM not in reg.rooms


def test_room_finished_with_other_sid_ignored(reg: RoomRegistry) -> None:
    reg.apply(env(joined()))
    assert reg.apply(env(RoomFinished(sid="RM_old"))) is True
    assert reg.rooms[ROOM].sid == ROOM_SID
    assert set(reg.rooms[ROOM].participants) == {"PA_a"}


def test_events_for_unknown_room_are_ignored_but_consumed() -> None:
    reg = RoomRegistry()
    e = env(joined(), room="ghost")
    assert reg.apply(e) is True
    assert reg.rooms == {}
    assert reg.apply(env(RoomFinished(sid="RM_x"), room="ghost")) is True
    assert reg.apply(env(RoomMetadataUpdated(sid="RM_x", metadata="x"), room="ghost")) is True
    assert reg.rooms == {}
    assert e.id in reg.applied


def test_event_without_room_is_ignored(reg: RoomRegistry) -> None:
    assert reg.apply(env(NodeHeartbeat(node_id="n", service="media", dc="dc1"), room=None)) is True
    assert list(reg.rooms) == [ROOM]


def test_event_for_other_room_does_not_touch_this_one(reg: RoomRegistry) -> None:
    reg.apply(env(created(sid="RM_b", name="other"), room="other"))
    reg.apply(env(joined(), room="other"))
    assert set(reg.rooms["other"].participants) == {"PA_a"}
    assert reg.rooms[ROOM].participants == {}


def test_room_metadata_updated(reg: RoomRegistry) -> None:
    reg.apply(env(RoomMetadataUpdated(sid=ROOM_SID, metadata="new")))
    assert reg.rooms[ROOM].metadata == "new"


def test_participant_joined_fields(reg: RoomRegistry) -> None:
    attrs = {"k": "v"}
    reg.apply(env(joined(name="Alice", metadata="md", attributes=attrs, kind=4, signal_node="sig-1",
                         info="aW5mbw=="), ts=1_234))
    p = reg.rooms[ROOM].participants["PA_a"]
    assert (p.sid, p.identity, p.name, p.metadata) == ("PA_a", "alice", "Alice", "md")
    assert p.attributes == {"k": "v"}
    assert (p.node, p.signal_node, p.joined_at_ms, p.kind, p.info) == ("media-1", "sig-1", 1_234, 4, "aW5mbw==")
    assert p.active is False
    assert p.tracks == {}
    assert reg.rooms[ROOM].by_identity("alice") is p
    assert reg.rooms[ROOM].by_identity("bob") is None
    assert reg.rooms[ROOM].nodes() == {"media-1"}


def test_nodes_lists_each_hosting_node_once(reg: RoomRegistry) -> None:
    reg.apply(env(joined("PA_a", "a", node="m1")))
    reg.apply(env(joined("PA_b", "b", node="m2")))
    reg.apply(env(joined("PA_c", "c", node="m1")))
    assert reg.rooms[ROOM].nodes() == {"m1", "m2"}


def test_participant_active(reg: RoomRegistry) -> None:
    reg.apply(env(joined()))
    reg.apply(env(ParticipantActive(sid="PA_a", identity="alice")))
    assert reg.rooms[ROOM].participants["PA_a"].active is True
    # Unknown sid: nothing created.
    reg.apply(env(ParticipantActive(sid="PA_zz", identity="zz")))
    assert set(reg.rooms[ROOM].participants) == {"PA_a"}


def test_participant_updated_changes_only_given_fields(reg: RoomRegistry) -> None:
    reg.apply(env(joined(name="Alice", metadata="md", attributes={"a": "1"}, info="OLD")))
    reg.apply(env(ParticipantUpdated(sid="PA_a", identity="alice", metadata="md2")))
    p = reg.rooms[ROOM].participants["PA_a"]
    assert (p.name, p.metadata, p.attributes, p.info) == ("Alice", "md2", {"a": "1"}, "OLD")

    reg.apply(env(ParticipantUpdated(sid="PA_a", identity="alice", name="", attributes={"b": "2"}, info="NEW")))
    assert (p.name, p.metadata, p.attributes, p.info) == ("", "md2", {"b": "2"}, "NEW")

    # Empty info does not erase the previous one; empty attributes replace the map.
    reg.apply(env(ParticipantUpdated(sid="PA_a", identity="alice", attributes={}, info="")))
    assert (p.attributes, p.info) == ({}, "NEW")


def test_participant_updated_unknown_sid_ignored(reg: RoomRegistry) -> None:
    reg.apply(env(ParticipantUpdated(sid="PA_zz", identity="zz", name="x")))
    assert reg.rooms[ROOM].participants == {}


def test_participant_left_records_departure_time(reg: RoomRegistry) -> None:
    reg.apply(env(joined()))
    reg.apply(env(joined("PA_b", "bob")))
    reg.apply(env(ParticipantLeft(sid="PA_a", identity="alice"), ts=5_000))
    room = reg.rooms[ROOM]
    assert set(room.participants) == {"PA_b"}
    assert room.last_departure_ms == 5_000
    # Leaving twice (or an unknown sid) does not move the departure time.
    reg.apply(env(ParticipantLeft(sid="PA_a", identity="alice"), ts=6_000))
    reg.apply(env(ParticipantLeft(sid="PA_zz", identity="zz"), ts=7_000))
    assert room.last_departure_ms == 5_000
    assert set(room.participants) == {"PA_b"}


def test_track_published_muted_unpublished(reg: RoomRegistry) -> None:
    reg.apply(env(joined()))
    t = track(name="mic", source=2, mime_type="audio/opus")
    reg.apply(env(TrackPublished(track=t, node="media-1")))
    p = reg.rooms[ROOM].participants["PA_a"]
    assert p.tracks == {"TR_a": t}

    reg.apply(env(TrackMuted(sid="TR_a", participant_sid="PA_a", muted=True)))
    assert p.tracks["TR_a"].muted is True
    assert p.tracks["TR_a"].name == "mic"
    assert p.tracks["TR_a"].mime_type == "audio/opus"
    assert t.muted is False  # the published payload is not mutated

    reg.apply(env(TrackMuted(sid="TR_a", participant_sid="PA_a", muted=False)))
    assert p.tracks["TR_a"].muted is False

    reg.apply(env(TrackUnpublished(sid="TR_a", participant_sid="PA_a")))
    assert p.tracks == {}


def test_track_events_for_unknown_participant_or_track_ignored(reg: RoomRegistry) -> None:
    reg.apply(env(joined()))
    reg.apply(env(TrackPublished(track=track(participant_sid="PA_zz"), node="media-1")))
    assert reg.rooms[ROOM].participants["PA_a"].tracks == {}

    reg.apply(env(TrackPublished(track=track(), node="media-1")))
    reg.apply(env(TrackMuted(sid="TR_other", participant_sid="PA_a", muted=True)))
    reg.apply(env(TrackMuted(sid="TR_a", participant_sid="PA_zz", muted=True)))
    tracks = reg.rooms[ROOM].participants["PA_a"].tracks
    assert set(tracks) == {"TR_a"}
    assert tracks["TR_a"].muted is False

    reg.apply(env(TrackUnpublished(sid="TR_other", participant_sid="PA_a")))
    reg.apply(env(TrackUnpublished(sid="TR_a", participant_sid="PA_zz")))
    assert set(tracks) == {"TR_a"}


def test_tracks_leave_with_their_participant(reg: RoomRegistry) -> None:
    reg.apply(env(joined()))
    reg.apply(env(TrackPublished(track=track(), node="media-1")))
    reg.apply(env(ParticipantLeft(sid="PA_a", identity="alice")))
    reg.apply(env(joined()))  # same sid again (new event): fresh state
    assert reg.rooms[ROOM].participants["PA_a"].tracks == {}


def test_replay_rebuilds_identical_state() -> None:
    events = [
        env(created(max_participants=2), ts=1),
        env(joined(name="A"), ts=2),
        env(joined("PA_b", "bob"), ts=3),
        env(ParticipantActive(sid="PA_a", identity="alice"), ts=4),
        env(TrackPublished(track=track(), node="media-1"), ts=5),
        env(TrackMuted(sid="TR_a", participant_sid="PA_a", muted=True), ts=6),
        env(ParticipantLeft(sid="PA_b", identity="bob"), ts=7),
        env(RoomMetadataUpdated(sid=ROOM_SID, metadata="z"), ts=8),
    ]
    first, second = RoomRegistry(), RoomRegistry()
    for e in events:
        first.apply(e)
    for e in events + events:  # redelivered twice
        second.apply(e)
    assert first.rooms == second.rooms
    room = first.rooms[ROOM]
    assert room.metadata == "z"
    assert room.last_departure_ms == 7
    assert set(room.participants) == {"PA_a"}
    assert room.participants["PA_a"].active is True
    assert room.participants["PA_a"].tracks["TR_a"].muted is True
