"""Webhooks: our events mapped to LiveKit's WebhookEvent, encoded and signed as LiveKit does."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import models

from services.room.webhooks import (
    CONTENT_TYPE,
    WebhookMapper,
    durable_name,
    encode,
    replay_events,
    request_headers,
    to_webhook,
    url_hash,
    webhook_id,
)
from shared.events import (
    Envelope,
    EventPayload,
    NodeDown,
    ParticipantActive,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    RoomCreated,
    RoomFinished,
    TrackKind,
    TrackMuted,
    TrackPayload,
    TrackPublished,
    TrackUnpublished,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*HMAC key.*")

KEY, SECRET = "devkey", "secret"
ROOM, ROOM_SID = "lobby", "RM_lobby"


def env(payload: EventPayload, ts: int, room: str | None = ROOM, event_id: str | None = None) -> Envelope:
    return Envelope.new(payload, dc="dc1", node="media-1", room=room, ts=ts, event_id=event_id)


def participant_info(sid: str, identity: str, **kw: object) -> str:
    info = models.ParticipantInfo(sid=sid, identity=identity, name=identity.title(), metadata=f"meta-{identity}",
                                  joined_at=1_700_000_001, kind=models.ParticipantInfo.Kind.STANDARD, **kw)
    return base64.b64encode(info.SerializeToString()).decode()


def audio_track(sid: str = "TR_Aa", participant_sid: str = "PA_alice") -> TrackPayload:
    info = models.TrackInfo(sid=sid, name="microphone", type=models.TrackType.AUDIO,
                            source=models.TrackSource.MICROPHONE, mime_type="audio/opus")
    return TrackPayload(sid=sid, participant_sid=participant_sid, name="microphone", kind=TrackKind.AUDIO,
                        source=models.TrackSource.MICROPHONE, mime_type="audio/opus",
                        info=base64.b64encode(info.SerializeToString()).decode())


def room_story() -> list[Envelope]:
    """A room's life: alice joins, publishes, unpublishes and leaves; bob never connects."""
    t = 1_700_000_000_000
    return [
        env(RoomCreated(sid=ROOM_SID, name=ROOM, empty_timeout=300, departure_timeout=20, max_participants=5,
                        metadata="room-meta"), t, event_id="EVT01"),
        env(ParticipantJoined(sid="PA_alice", room_sid=ROOM_SID, identity="alice", name="Alice", node="media-1",
                              metadata="meta-alice", info=participant_info("PA_alice", "alice")), t + 1000,
            event_id="EVT02"),
        env(ParticipantActive(sid="PA_alice", identity="alice"), t + 2000, event_id="EVT03"),
        env(TrackPublished(track=audio_track(), node="media-1"), t + 3000, event_id="EVT04"),
        env(TrackMuted(sid="TR_Aa", participant_sid="PA_alice", muted=True), t + 3500, event_id="EVT05"),
        env(ParticipantJoined(sid="PA_bob", room_sid=ROOM_SID, identity="bob", node="media-1",
                              info=participant_info("PA_bob", "bob")), t + 4000, event_id="EVT06"),
        env(ParticipantLeft(sid="PA_bob", identity="bob", reason="SIGNAL_CLOSE", aborted=True), t + 5000,
            event_id="EVT07"),
        env(TrackUnpublished(sid="TR_Aa", participant_sid="PA_alice"), t + 6000, event_id="EVT08"),
        env(ParticipantLeft(sid="PA_alice", identity="alice", reason="CLIENT_INITIATED"), t + 6100,
            event_id="EVT09"),
        env(RoomFinished(sid=ROOM_SID, reason="idle"), t + 26_100, event_id="EVT10"),
    ]


def mapped(events: list[Envelope]) -> list[tuple[Envelope, object]]:
    mapper = WebhookMapper()
    out = []
    for one in events:
        event = mapper.feed(one)
        if event is not None:
            out.append((one, event))
    return out


def test_event_names_in_livekit_order() -> None:
    names = [event.event for _, event in mapped(room_story())]  # type: ignore[attr-defined]
    assert names == ["room_started", "participant_joined", "track_published", "participant_connection_aborted",
                     "track_unpublished", "participant_left", "room_finished"]


def test_ids_are_stable_and_derived_from_the_event() -> None:
    first = mapped(room_story())
    again = mapped(room_story())
    for (source, event), (_, replayed) in zip(first, again, strict=True):
        assert event.id == webhook_id(source.id) == "EV_" + source.id  # type: ignore[attr-defined]
        assert event.created_at == source.ts // 1000  # type: ignore[attr-defined]
        assert encode(event) == encode(replayed)  # type: ignore[arg-type]  # the same bytes on a replay


def test_payloads_carry_room_participant_and_track() -> None:
    events = {event.event: event for _, event in mapped(room_story())}  # type: ignore[attr-defined]
    started = events["room_started"]
    assert (started.room.sid, started.room.name, started.room.empty_timeout, started.room.departure_timeout,
            started.room.max_participants, started.room.metadata) == (ROOM_SID, ROOM, 300, 20, 5, "room-meta")
    assert started.room.creation_time == 1_700_000_000
    assert not started.HasField("participant")

    joined = events["participant_joined"]
    assert joined.room.sid == ROOM_SID
    assert (joined.participant.sid, joined.participant.identity, joined.participant.name,
            joined.participant.metadata) == ("PA_alice", "alice", "Alice", "meta-alice")
    assert joined.participant.state == models.ParticipantInfo.State.ACTIVE
    assert joined.participant.joined_at == 1_700_000_001

    published = events["track_published"]
    assert (published.participant.sid, published.participant.identity) == ("PA_alice", "alice")
    assert (published.track.sid, published.track.type, published.track.source, published.track.mime_type) == (
        "TR_Aa", models.TrackType.AUDIO, models.TrackSource.MICROPHONE, "audio/opus")

    unpublished = events["track_unpublished"]
    assert unpublished.track.sid == "TR_Aa" and unpublished.track.name == "microphone"
    assert unpublished.track.muted  # the state it had when it went away

    left = events["participant_left"]
    assert left.participant.identity == "alice"
    assert left.participant.state == models.ParticipantInfo.State.DISCONNECTED
    assert left.participant.disconnect_reason == models.DisconnectReason.CLIENT_INITIATED

    aborted = events["participant_connection_aborted"]
    assert aborted.participant.identity == "bob"
    assert aborted.participant.disconnect_reason == models.DisconnectReason.SIGNAL_CLOSE

    finished = events["room_finished"]
    assert (finished.room.sid, finished.room.name, finished.room.empty_timeout) == (ROOM_SID, ROOM, 300)


def test_body_is_camel_case_protojson() -> None:
    bodies = [json.loads(encode(event)) for _, event in mapped(room_story())]  # type: ignore[arg-type]
    started, joined, published = bodies[0], bodies[1], bodies[2]
    assert started["event"] == "room_started"
    assert started["createdAt"] == "1700000000"  # int64 as a string, as protojson
    assert started["id"].startswith("EV_")
    assert started["room"]["emptyTimeout"] == 300 and started["room"]["maxParticipants"] == 5
    assert started["room"]["creationTimeMs"] == "1700000000000"
    assert joined["participant"]["joinedAt"] == "1700000001"
    assert joined["participant"]["state"] == "ACTIVE"  # enums by name
    assert published["track"]["mimeType"] == "audio/opus" and published["track"]["source"] == "MICROPHONE"
    assert "type" not in published["track"]  # AUDIO is the zero value: omitted, as protojson does

    def keys(value: object) -> list[str]:
        if isinstance(value, dict):
            return [k for k, v in value.items() for k in [k, *keys(v)]]
        if isinstance(value, list):
            return [k for item in value for k in keys(item)]
        return []

    every_key = {k for body in bodies for k in keys(body)}
    assert not any("_" in k for k in every_key), sorted(k for k in every_key if "_" in k)


def test_signature_verifies_with_livekit_webhook_receiver() -> None:
    receiver = api.WebhookReceiver(api.TokenVerifier(KEY, SECRET))
    for source, event in mapped(room_story()):
        body = encode(event)  # type: ignore[arg-type]
        headers = request_headers(body, KEY, SECRET)
        assert headers["Content-Type"] == CONTENT_TYPE == "application/webhook+json"
        assert not headers["Authorization"].startswith("Bearer ")
        received = receiver.receive(body.decode(), headers["Authorization"])
        assert received == event
        assert received.id == "EV_" + source.id

    body = encode(mapped(room_story())[0][1])  # type: ignore[arg-type]
    auth = request_headers(body, KEY, SECRET)["Authorization"]
    with pytest.raises(Exception, match="hash mismatch"):
        receiver.receive(body.decode().replace("lobby", "lobbx"), auth)
    with pytest.raises(Exception):  # noqa: B017  (livekit-api raises a bare jwt error)
        api.WebhookReceiver(api.TokenVerifier(KEY, "other-secret")).receive(body.decode(), auth)


def test_events_that_are_no_webhook() -> None:
    mapper = WebhookMapper()
    story = room_story()
    assert mapper.feed(story[0]) is not None
    assert mapper.feed(story[1]) is None  # ParticipantJoined: joined is sent when active
    assert mapper.feed(env(ParticipantUpdated(sid="PA_alice", identity="alice", name="A"), 1)) is None
    assert mapper.feed(env(NodeDown(node_id="media-1", service="media", dc="dc1"), 2, room=None)) is None


def test_redelivery_maps_to_the_same_webhook() -> None:
    mapper = WebhookMapper()
    story = room_story()
    for one in story[:8]:
        mapper.feed(one)
    left = mapper.feed(story[8])
    assert left is not None and left.participant.name == "Alice"
    assert mapper.feed(story[8]) == left  # the state no longer has alice, the webhook is the same


def test_unknown_participant_falls_back_to_the_event() -> None:
    registry_less = WebhookMapper()
    event = registry_less.feed(env(ParticipantActive(sid="PA_x", identity="xavier"), 5000, room="elsewhere"))
    assert event is not None and event.event == "participant_joined"
    assert (event.participant.sid, event.participant.identity, event.room.name) == ("PA_x", "xavier", "elsewhere")
    assert to_webhook(env(TrackUnpublished(sid="TR_z", participant_sid="PA_x"), 1), WebhookMapper().registry) \
        .track.sid == "TR_z"  # type: ignore[union-attr]


def test_replay_selection_by_time_and_room() -> None:
    story = room_story()
    other = env(RoomCreated(sid="RM_other", name="other"), story[-1].ts, room="other", event_id="EVT11")
    everything = [*story, other]
    since = story[3].ts  # from track_published on
    picked = replay_events(everything, since)
    assert [e.event for _, e in picked] == ["track_published", "participant_connection_aborted",
                                            "track_unpublished", "participant_left", "room_finished",
                                            "room_started"]
    assert picked[0][1].participant.identity == "alice"  # state rebuilt from the events before `since`
    assert [e.room.name for _, e in replay_events(everything, 0, room="other")] == ["other"]


def test_url_names() -> None:
    assert url_hash("http://a/hook") == url_hash(" http://a/hook ") != url_hash("http://b/hook")
    assert re.fullmatch(r"webhook-[0-9a-f]{16}", durable_name("http://a/hook"))


def test_delivery_records(tmp_path: Path) -> None:
    from shared.db import make_engine, upgrade
    from shared.eventstore import EventStore

    url = f"sqlite:///{tmp_path / 'wh.db'}"
    upgrade(url)
    store = EventStore(make_engine(url))
    h = url_hash("http://a/hook")
    assert not store.webhook_delivered(h, "EV_1")
    assert store.record_webhook_delivery(h, "EV_1", ROOM, "room_started", delivered_at=5)
    assert not store.record_webhook_delivery(h, "EV_1", ROOM, "room_started")  # once per (url, id)
    assert store.record_webhook_delivery(url_hash("http://b/hook"), "EV_1", ROOM, "room_started")
    assert store.webhook_delivered(h, "EV_1") and not store.webhook_delivered(h, "EV_2")
    [row] = store.webhook_deliveries(h)
    assert (row.webhook_id, row.room, row.event, row.delivered_at) == ("EV_1", ROOM, "room_started", 5)
    assert len(store.webhook_deliveries()) == 2


def test_replay_since_forms() -> None:
    from datetime import datetime

    from meshrtc.commands.webhooks import UsageError, parse_since

    now = 1_700_000_000.0
    assert parse_since("1700000000", now) == 1_700_000_000_000
    assert parse_since("10m", now) == (now - 600) * 1000
    assert parse_since("1h30m", now) == (now - 5400) * 1000
    assert parse_since("2d", now) == (now - 2 * 86400) * 1000
    assert parse_since("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_since("2023-11-14T23:13:20+01:00") == 1_700_000_000_000
    local = datetime(2023, 11, 14, 22, 13, 20).astimezone()
    assert parse_since("2023-11-14T22:13:20") == int(local.timestamp() * 1000)  # no offset: local time
    assert datetime.fromtimestamp(parse_since("2023-11-14T22:13:20Z") / 1000, UTC).hour == 22
    with pytest.raises(UsageError, match="invalid --since 'yesterday'"):
        parse_since("yesterday")
