"""RemoteRoster: other nodes' participants and tracks folded from room events."""

from __future__ import annotations

import base64

from livekit.protocol import models

from services.media.roster import Change, ChangeKind, RemoteRoster
from shared.events import (
    Envelope,
    ParticipantActive,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    TrackKind,
    TrackMuted,
    TrackPayload,
    TrackPublished,
    TrackUnpublished,
    TrackWire,
)

ROOM = "weekly sync"
WIRE = TrackWire(kind="video", mime_type="video/VP8", clock_rate=90000, payload_types=[96],
                 extensions={"urn:ietf:params:rtp-hdrext:sdes:mid": 4}, rids=["q", "h", "f"])


def env(payload: object, node: str = "media-b", dc: str = "dc2") -> Envelope:
    return Envelope.new(payload, dc=dc, node=node, room=ROOM)  # type: ignore[arg-type]


def joined(sid: str = "PA_b", identity: str = "bob", node: str = "media-b", version: int = 1) -> Envelope:
    info = models.ParticipantInfo(sid=sid, identity=identity, name="Bob", version=version)
    return env(ParticipantJoined(sid=sid, room_sid="RM_1", identity=identity, node=node, project="devkey",
                                 info=base64.b64encode(info.SerializeToString()).decode()), node=node)


def published(track_sid: str = "TR_v", participant: str = "PA_b", wire: TrackWire | None = WIRE) -> Envelope:
    info = models.TrackInfo(sid=track_sid, name="camera", type=models.TrackType.VIDEO, width=1280, height=720)
    return env(TrackPublished(node="media-b", track=TrackPayload(
        sid=track_sid, participant_sid=participant, kind=TrackKind.VIDEO, width=1280, height=720,
        info=base64.b64encode(info.SerializeToString()).decode(), wire=wire)))


def test_own_node_events_are_ignored() -> None:
    roster = RemoteRoster("media-a")
    assert roster.apply(joined(node="media-a")) == []
    assert roster.participants == {}


def test_join_publish_mute_unpublish_leave() -> None:
    roster = RemoteRoster("media-a")
    assert roster.apply(joined()) == [Change(ChangeKind.JOINED, "PA_b")]
    bob = roster.participants["PA_b"]
    assert (bob.node, bob.dc, bob.project) == ("media-b", "dc2", "devkey")
    assert bob.info.state == models.ParticipantInfo.State.JOINED
    v1 = bob.info.version

    assert roster.apply(env(ParticipantActive(sid="PA_b", identity="bob"))) == [Change(ChangeKind.UPDATED, "PA_b")]
    assert bob.info.state == models.ParticipantInfo.State.ACTIVE

    assert roster.apply(published()) == [Change(ChangeKind.TRACK_ADDED, "PA_b", "TR_v"),
                                         Change(ChangeKind.UPDATED, "PA_b")]
    assert [t.sid for t in bob.info.tracks] == ["TR_v"] and bob.info.is_publisher
    assert bob.tracks["TR_v"].wire.rids == ["q", "h", "f"]
    assert roster.apply(published()) == []  # replayed: nothing new

    assert roster.apply(env(TrackMuted(sid="TR_v", participant_sid="PA_b", muted=True)))[0] == Change(
        ChangeKind.TRACK_CHANGED, "PA_b", "TR_v")
    assert bob.info.tracks[0].muted
    assert roster.apply(env(TrackMuted(sid="TR_v", participant_sid="PA_b", muted=True))) == []

    assert roster.apply(env(TrackUnpublished(sid="TR_v", participant_sid="PA_b")))[0] == Change(
        ChangeKind.TRACK_REMOVED, "PA_b", "TR_v")
    assert not bob.info.tracks and not bob.info.is_publisher

    roster.apply(published("TR_w"))
    assert roster.apply(env(ParticipantLeft(sid="PA_b", identity="bob"))) == [
        Change(ChangeKind.TRACK_REMOVED, "PA_b", "TR_w"), Change(ChangeKind.LEFT, "PA_b")]
    assert bob.info.state == models.ParticipantInfo.State.DISCONNECTED
    assert bob.info.version > v1
    assert roster.participants == {}


def test_versions_only_grow_across_sources() -> None:
    roster = RemoteRoster("media-a")
    roster.apply(joined(version=7))
    bob = roster.participants["PA_b"]
    seen = [bob.info.version]
    fresh = models.ParticipantInfo(sid="PA_b", identity="bob", metadata="m", version=3)  # older than ours
    roster.apply(env(ParticipantUpdated(sid="PA_b", identity="bob",
                                        info=base64.b64encode(fresh.SerializeToString()).decode())))
    seen.append(bob.info.version)
    fresh.version = 40
    roster.apply(env(ParticipantUpdated(sid="PA_b", identity="bob",
                                        info=base64.b64encode(fresh.SerializeToString()).decode())))
    seen.append(bob.info.version)
    assert seen == sorted(set(seen)) and seen[-1] == 40
    assert bob.info.metadata == "m"


def test_track_without_wire_or_owner_is_skipped() -> None:
    roster = RemoteRoster("media-a")
    assert roster.apply(published()) == []  # owner unknown
    roster.apply(joined())
    assert roster.apply(published(wire=None)) == []


def test_identity_rejoining_elsewhere_replaces_the_old_participant() -> None:
    roster = RemoteRoster("media-a")
    roster.apply(joined("PA_old", "bob"))
    roster.apply(published("TR_old", "PA_old"))
    changes = roster.apply(joined("PA_new", "bob", node="media-c"))
    assert changes == [Change(ChangeKind.TRACK_REMOVED, "PA_old", "TR_old"), Change(ChangeKind.LEFT, "PA_old"),
                       Change(ChangeKind.JOINED, "PA_new")]
    assert list(roster.participants) == ["PA_new"]


def test_garbage_info_falls_back_to_event_fields() -> None:
    roster = RemoteRoster("media-a")
    roster.apply(env(ParticipantJoined(sid="PA_x", room_sid="RM_1", identity="x", name="X", node="media-b",
                                       info="!!not base64!!")))
    assert roster.participants["PA_x"].info.name == "X"
