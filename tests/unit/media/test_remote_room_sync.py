"""RemoteRoomSync after a node died: the dead node's incarnation of a participant who rejoined
here is neither replayed from the room's history nor kept once the new one joins (no ghost
participant, no ghost tracks for the viewers to subscribe to)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest
from livekit.protocol import models

from services.media.relay_link import RelayLink
from services.media.remote import RemoteRoomSync, RemoteTrack
from shared.events import Envelope, ParticipantJoined, TrackKind, TrackPayload, TrackPublished, TrackWire

WIRE = TrackWire(kind="audio", mime_type="audio/opus", clock_rate=48000, payload_types=[111])


class Room:
    """The node's part of the room, as RemoteRoomSync sees it."""

    def __init__(self) -> None:
        self.name = "r"
        self.local: dict[str, int] = {}  # identity -> joined at (ms)
        self.tracks: dict[str, RemoteTrack] = {}
        self.announced: list[models.ParticipantInfo] = []

    def has_track(self, track_sid: str) -> bool:
        return track_sid in self.tracks

    def local_joined_at_ms(self, identity: str) -> int | None:
        return self.local.get(identity)

    def remote_participant_changed(self, info: models.ParticipantInfo) -> None:
        self.announced.append(info)

    def remote_track_added(self, track: RemoteTrack) -> None:
        self.tracks[track.sid] = track

    def remote_track_removed(self, track: RemoteTrack) -> None:
        del self.tracks[track.sid]


@pytest.fixture
def link() -> Iterator[RelayLink]:
    relay_link = RelayLink("127.0.0.1", "127.0.0.1")
    yield relay_link
    relay_link.close()


def history(sid: str, identity: str, track_sid: str, at_ms: int) -> list[Envelope]:
    info = models.ParticipantInfo(sid=sid, identity=identity)
    track = models.TrackInfo(sid=track_sid, type=models.TrackType.AUDIO)
    return [
        Envelope.new(ParticipantJoined(sid=sid, room_sid="RM_1", identity=identity, node="media-dead",
                                       info=base64.b64encode(info.SerializeToString()).decode()),
                     dc="dc1", node="media-dead", room="r", ts=at_ms),
        Envelope.new(TrackPublished(node="media-dead", track=TrackPayload(
            sid=track_sid, participant_sid=sid, kind=TrackKind.AUDIO, wire=WIRE,
            info=base64.b64encode(track.SerializeToString()).decode())),
            dc="dc1", node="media-dead", room="r", ts=at_ms + 10),
    ]


def test_an_older_incarnation_of_a_participant_present_here_is_not_replayed(link: RelayLink) -> None:
    room = Room()
    sync = RemoteRoomSync(room, "media-here", link, lambda: None)
    now = int(time.time() * 1000)
    room.local["presenter"] = now  # rejoined here after its node died
    for env in history("PA_old", "presenter", "TR_old", at_ms=now - 5000):
        sync.apply(env)
    assert sync.participants == {} and room.tracks == {} and room.announced == []
    for env in history("PA_bob", "bob", "TR_bob", at_ms=now - 5000):  # someone else is still replayed
        sync.apply(env)
    assert list(sync.participants) == ["PA_bob"] and list(room.tracks) == ["TR_bob"]


def test_a_local_join_drops_the_remote_incarnation_of_the_same_identity(link: RelayLink) -> None:
    room = Room()
    sync = RemoteRoomSync(room, "media-here", link, lambda: None)
    for env in history("PA_old", "presenter", "TR_old", at_ms=int(time.time() * 1000) - 5000):
        sync.apply(env)
    assert list(room.tracks) == ["TR_old"]
    sync.drop_identity("presenter")
    assert sync.participants == {} and room.tracks == {} and sync.remote_tracks() == []
    assert room.announced[-1].sid == "PA_old"
    assert room.announced[-1].state == models.ParticipantInfo.State.DISCONNECTED
    sync.drop_identity("presenter")  # nothing left to drop
    assert room.tracks == {}


def test_a_dead_node_s_participants_go_at_once_and_are_not_replayed(link: RelayLink) -> None:
    room = Room()
    down_nodes: dict[str, int] = {}
    sync = RemoteRoomSync(room, "media-here", link, lambda: None, down_nodes)
    now = int(time.time() * 1000)
    for env in history("PA_old", "presenter", "TR_old", at_ms=now - 5000):
        sync.apply(env)
    sync.node_down("media-dead", now - 1000)
    assert sync.participants == {} and room.tracks == {}
    assert room.announced[-1].state == models.ParticipantInfo.State.DISCONNECTED
    late = RemoteRoomSync(Room(), "media-here", link, lambda: None, down_nodes)  # a room opened later
    for env in history("PA_old", "presenter", "TR_old", at_ms=now - 5000):
        late.apply(env)
    assert late.participants == {}
    for env in history("PA_new", "presenter", "TR_new", at_ms=now):  # the node restarted, same id
        late.apply(env)
    assert list(late.participants) == ["PA_new"]
