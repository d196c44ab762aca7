"""Upcasters: a stored event of an older schema version is brought up to the current one before it
is validated, one version at a time, so it still folds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.room.state import RoomRegistry
from shared import events
from shared.events import (
    Envelope,
    EventDecodeError,
    ParticipantJoined,
    RoomCreated,
    Upcasters,
    upcaster,
)

ROOM = "lobby"


@pytest.fixture
def upcasters(monkeypatch: pytest.MonkeyPatch) -> Upcasters:
    """An empty registry in place of the real one, and participant.joined at a pretend v3 whose
    history is: v1 named the identity `user`; v2 stored attributes as "key=value" strings."""
    fresh = Upcasters()
    monkeypatch.setattr(events, "UPCASTERS", fresh)
    monkeypatch.setattr(ParticipantJoined, "VERSION", 3)
    return fresh


def _v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    payload["identity"] = payload.pop("user")
    return payload


def _v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
    payload["attributes"] = dict(item.split("=", 1) for item in payload.get("attributes", []))
    return payload


def _stored(type_name: str, version: int, payload: dict[str, Any], event_id: str = "EV_2") -> dict[str, Any]:
    return {"id": event_id, "type": type_name, "ts": 2_000, "dc": "dc1", "node": "room-1", "room": ROOM,
            "v": version, "payload": payload}


V1_JOINED = {"sid": "PA_a", "room_sid": "RM_1", "user": "alice", "node": "media-1"}
V2_JOINED = {"sid": "PA_a", "room_sid": "RM_1", "identity": "alice", "node": "media-1", "attributes": ["a=1"]}


def test_a_stored_older_event_still_folds(upcasters: Upcasters) -> None:
    upcasters.register(ParticipantJoined.TYPE, 1, _v1_to_v2)
    upcasters.register(ParticipantJoined.TYPE, 2, _v2_to_v3)
    registry = RoomRegistry()
    registry.apply(Envelope.new(RoomCreated(sid="RM_1", name=ROOM), dc="dc1", node="room-1", room=ROOM,
                                event_id="EV_1", ts=1_000))
    old = Envelope.from_json(json.dumps(_stored("participant.joined", 1, {**V1_JOINED, "attributes": ["k=v"]})))
    assert registry.apply(old)
    participant = registry.rooms[ROOM].participants["PA_a"]
    assert (participant.identity, participant.attributes, participant.joined_at_ms) == ("alice", {"k": "v"}, 2_000)
    assert old.v == 3  # the envelope carries the schema its payload now has


def test_upcasters_chain_from_any_older_version(upcasters: Upcasters) -> None:
    steps: list[str] = []

    @upcaster(ParticipantJoined.TYPE, 1)
    def one(payload: dict[str, Any]) -> dict[str, Any]:
        steps.append("1->2")
        return _v1_to_v2(payload)

    @upcaster(ParticipantJoined.TYPE, 2)
    def two(payload: dict[str, Any]) -> dict[str, Any]:
        steps.append("2->3")
        return _v2_to_v3(payload)

    from_v1 = Envelope.from_dict(_stored("participant.joined", 1, {**V1_JOINED, "attributes": ["a=1"]}))
    assert steps == ["1->2", "2->3"]
    from_v2 = Envelope.from_dict(_stored("participant.joined", 2, V2_JOINED))
    assert steps == ["1->2", "2->3", "2->3"]
    current = Envelope.from_dict(_stored("participant.joined", 3, {**V2_JOINED, "attributes": {"a": "1"}}))
    assert steps == ["1->2", "2->3", "2->3"]  # the current version is validated as stored
    assert from_v1.payload == from_v2.payload == current.payload
    assert isinstance(current.payload, ParticipantJoined) and current.payload.attributes == {"a": "1"}


def test_upcasting_does_not_change_the_stored_dict(upcasters: Upcasters) -> None:
    upcasters.register(ParticipantJoined.TYPE, 1, _v1_to_v2)
    upcasters.register(ParticipantJoined.TYPE, 2, _v2_to_v3)
    stored = _stored("participant.joined", 1, dict(V1_JOINED))
    Envelope.from_dict(stored)
    assert stored["payload"] == V1_JOINED


def test_a_version_newer_than_the_code_is_a_clear_error(upcasters: Upcasters) -> None:
    with pytest.raises(EventDecodeError, match=r"participant.joined v4 is newer than this build understands \(v3\)"):
        Envelope.from_dict(_stored("participant.joined", 4, V2_JOINED))


def test_a_missing_step_is_a_clear_error(upcasters: Upcasters) -> None:
    upcasters.register(ParticipantJoined.TYPE, 2, _v2_to_v3)
    with pytest.raises(EventDecodeError, match=r"participant.joined v1 cannot be read: no upcaster to v2"):
        Envelope.from_dict(_stored("participant.joined", 1, V1_JOINED))


def test_an_upcaster_that_fails_on_a_payload_makes_it_malformed(upcasters: Upcasters) -> None:
    upcasters.register(ParticipantJoined.TYPE, 1, _v1_to_v2)
    upcasters.register(ParticipantJoined.TYPE, 2, _v2_to_v3)
    with pytest.raises(EventDecodeError, match="malformed"):
        Envelope.from_dict(_stored("participant.joined", 1, {"sid": "PA_a"}))  # no `user` to rename


def test_an_unknown_type_is_a_clear_error(upcasters: Upcasters) -> None:
    with pytest.raises(EventDecodeError, match=r"unknown event type 'nope\.nope'"):
        Envelope.from_dict(_stored("nope.nope", 1, {}))
    with pytest.raises(EventDecodeError, match=r"unknown event type 'nope\.nope'"):
        upcasters.register("nope.nope", 1, _v1_to_v2)


def test_an_upcaster_is_declared_once_and_only_below_the_current_version(upcasters: Upcasters) -> None:
    upcasters.register(ParticipantJoined.TYPE, 1, _v1_to_v2)
    with pytest.raises(ValueError, match="declared twice"):
        upcasters.register(ParticipantJoined.TYPE, 1, _v1_to_v2)
    for version in (0, 3, 4):
        with pytest.raises(ValueError, match="no upcaster"):
            upcasters.register(ParticipantJoined.TYPE, version, _v2_to_v3)

