from __future__ import annotations

import json

import pytest

from shared.contracts.subjects import decode_token, encode_token, event_subject, room_events_filter
from shared.events import (
    Direction,
    Envelope,
    EventDecodeError,
    ParticipantJoined,
    RoomCreated,
    UsageSample,
    known_event_types,
)
from shared.ids import event_id_time_ms, new_event_id, new_participant_sid, new_room_sid, new_track_sid


def test_envelope_round_trip_keeps_every_field() -> None:
    payload = ParticipantJoined(sid="PA_1", room_sid="RM_1", identity="al.ice *>", node="n1", attributes={"a": "b"})
    env = Envelope.new(payload, dc="dc1", node="media-1", room="a.b *>")
    back = Envelope.from_json(env.to_json())
    assert back == env
    assert back.payload == payload
    assert (back.type, back.v, back.dc, back.node, back.room) == ("participant.joined", 1, "dc1", "media-1", "a.b *>")


def test_event_ids_sort_by_time_and_are_unique() -> None:
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert new_event_id(now_ms=1) < new_event_id(now_ms=10**12)
    assert event_id_time_ms(new_event_id(now_ms=123456789)) == 123456789


def test_sids_have_livekit_prefixes() -> None:
    assert new_room_sid().startswith("RM_")
    assert new_participant_sid().startswith("PA_")
    assert new_track_sid("V").startswith("TR_V")


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1,2]", b'{"type":"room.created"}',
                                 b'{"id":"x","type":"nope.nope","ts":1,"dc":"d","node":"n","v":1,"payload":{}}',
                                 b'{"id":"x","type":"room.created","ts":1,"dc":"d","node":"n","v":1,"payload":{}}'])
def test_garbage_is_a_clear_decode_error(raw: bytes) -> None:
    with pytest.raises(EventDecodeError):
        Envelope.from_json(raw)


def test_newer_schema_version_is_refused() -> None:
    env = Envelope.new(RoomCreated(sid="RM_1", name="r"), dc="dc1", node="n")
    data = env.to_dict()
    data["v"] = 99
    with pytest.raises(EventDecodeError, match="newer"):
        Envelope.from_json(json.dumps(data))


def test_usage_sample_is_typed() -> None:
    sample = UsageSample(project="devkey", room="r", direction=Direction.DOWNSTREAM, bytes=10, start_ms=0, end_ms=1)
    assert Envelope.from_json(Envelope.new(sample, dc="dc1", node="n").to_json()).payload == sample
    assert {"room.created", "participant.joined", "track.published", "node.heartbeat", "node.down",
            "link.state", "usage.sample"} <= set(known_event_types())


@pytest.mark.parametrize("name", ["a.b *>", "", ">", "*", "with space", "ünïcødé", "x" * 300, "a..b"])
def test_subject_tokens_are_safe_and_reversible(name: str) -> None:
    token = encode_token(name)
    assert all(c.isalnum() or c in "-_" for c in token)
    assert decode_token(token) == name
    subject = event_subject("dc1", "room.created", name)
    assert subject.count(".") == 4  # events.dc1.room.created.<token>: no extra tokens from the name
    assert " " not in subject and "*" not in subject and ">" not in subject


def test_room_filter_matches_only_that_room() -> None:
    assert room_events_filter("dc1", "a.b *>").endswith(encode_token("a.b *>"))
    with pytest.raises(ValueError):
        event_subject("DC 1", "room.created", "r")
