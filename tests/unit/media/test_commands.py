"""RoomService commands on a media node: one handler per command type, applied to hand-written
fakes of the room and its sessions; and the room service's RoomApi building those commands
from client requests, over the wire form."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import pytest
from google.protobuf.message import Message
from livekit.protocol import models, rtc
from livekit.protocol import room as room_pb

from services.media.commands import HANDLERS, CommandError, apply_command
from services.room.api import RoomApi
from services.room.state import RoomRegistry
from shared.contracts.control import PermissionSpec, RoomSpec
from shared.contracts.media_commands import (
    MEDIA_COMMANDS,
    CloseRoom,
    CommandResult,
    MediaCommand,
    MuteTrack,
    ParticipantTrackSids,
    RemoveParticipant,
    SendData,
    UpdateParticipant,
    UpdateRoomMetadata,
    UpdateSubscriptions,
    decode_media_command,
)
from shared.events import (
    Envelope,
    EventPayload,
    ParticipantJoined,
    RoomCreated,
    TrackKind,
    TrackPayload,
    TrackPublished,
)


@dataclass
class FakeTrack:
    sid: str
    info: models.TrackInfo


@dataclass
class FakeSession:
    identity: str
    sid: str
    tracks: dict[str, FakeTrack] = field(default_factory=dict)
    info: models.ParticipantInfo = field(default_factory=models.ParticipantInfo)
    closed: list[int] = field(default_factory=list)
    delivered: list[tuple[bytes, bool]] = field(default_factory=list)
    sent: list[rtc.SignalResponse] = field(default_factory=list)
    muted: list[tuple[str, bool]] = field(default_factory=list)
    updates: list[room_pb.UpdateParticipantRequest] = field(default_factory=list)
    frames: list[rtc.SignalRequest] = field(default_factory=list)

    async def close(self, reason: int) -> None:
        self.closed.append(reason)

    def deliver_data(self, packet: bytes, reliable: bool) -> None:
        self.delivered.append((packet, reliable))

    def send(self, response: rtc.SignalResponse) -> None:
        self.sent.append(response)

    def set_muted(self, track: FakeTrack, muted: bool) -> None:
        self.muted.append((track.sid, muted))
        track.info.muted = muted

    def apply_update(self, request: room_pb.UpdateParticipantRequest) -> None:
        self.updates.append(request)
        self.info.name = request.name or self.info.name

    async def handle_frame(self, data: bytes) -> None:
        self.frames.append(rtc.SignalRequest.FromString(data))


class FakeRoom:
    def __init__(self, *sessions: FakeSession) -> None:
        self.spec = RoomSpec(name="r", sid="RM_r", metadata="old")
        self.sessions = {s.sid: s for s in sessions}
        self.broadcasts: list[rtc.SignalResponse] = []

    def broadcast(self, response: rtc.SignalResponse) -> None:
        self.broadcasts.append(response)

    def proto(self) -> models.Room:
        return models.Room(name=self.spec.name, sid=self.spec.sid, metadata=self.spec.metadata)


def alice() -> FakeSession:
    track = FakeTrack("TR_a", models.TrackInfo(sid="TR_a", name="mic"))
    return FakeSession("alice", "PA_a", tracks={"TR_a": track},
                       info=models.ParticipantInfo(sid="PA_a", identity="alice"))


async def apply(room: FakeRoom, command: MediaCommand) -> CommandResult:
    return await apply_command(room, command)  # type: ignore[arg-type]  # the fake has what commands use


def test_every_command_type_has_a_handler() -> None:
    assert set(HANDLERS) == set(MEDIA_COMMANDS)


async def test_close_room_closes_every_session() -> None:
    a, b = alice(), FakeSession("bob", "PA_b")
    room = FakeRoom(a, b)
    assert (await apply(room, CloseRoom(room="r"))).ok
    assert a.closed == b.closed == [models.DisconnectReason.ROOM_DELETED]
    await apply(room, CloseRoom(room="r", reason=models.DisconnectReason.SERVER_SHUTDOWN))
    assert a.closed[-1] == models.DisconnectReason.SERVER_SHUTDOWN


async def test_send_data_goes_to_the_destinations_only() -> None:
    a, b = alice(), FakeSession("bob", "PA_b")
    room = FakeRoom(a, b)
    await apply(room, SendData(room="r", data=b"\xffhi", topic="chat", destination_identities=["bob"], nonce=b"n",
                               reliable=False))
    assert a.delivered == []
    [(raw, reliable)] = b.delivered
    packet = models.DataPacket.FromString(raw)
    assert not reliable and packet.kind == models.DataPacket.Kind.LOSSY
    assert (packet.user.payload, packet.user.topic, packet.user.nonce, list(packet.user.destination_identities)) == \
        (b"\xffhi", "chat", b"n", ["bob"])


async def test_send_data_without_destinations_goes_to_everyone() -> None:
    a, b = alice(), FakeSession("bob", "PA_b")
    await apply(FakeRoom(a, b), SendData(room="r", data=b"x"))
    assert [r for _, r in a.delivered] == [r for _, r in b.delivered] == [True]


async def test_room_metadata_is_set_and_broadcast() -> None:
    room = FakeRoom(alice())
    await apply(room, UpdateRoomMetadata(room="r", metadata="new"))
    assert room.spec.metadata == "new"
    [update] = room.broadcasts
    assert update.room_update.room.metadata == "new"


@pytest.mark.parametrize("command", [
    RemoveParticipant(room="r", participant_sid="PA_nobody"),
    MuteTrack(room="r", participant_sid="PA_nobody", track_sid="TR_a", muted=True),
    UpdateParticipant(room="r", participant_sid="PA_nobody"),
    UpdateSubscriptions(room="r", participant_sid="PA_nobody", subscribe=True),
], ids=lambda c: c.op)
async def test_participant_commands_need_a_hosted_participant(command: MediaCommand) -> None:
    with pytest.raises(CommandError, match="participant does not exist"):
        await apply(FakeRoom(alice()), command)


async def test_remove_closes_the_session() -> None:
    a = alice()
    await apply(FakeRoom(a), RemoveParticipant(room="r", participant_sid="PA_a"))
    assert a.closed == [models.DisconnectReason.PARTICIPANT_REMOVED]


async def test_mute_tells_the_publisher_and_answers_the_track() -> None:
    a = alice()
    result = await apply(FakeRoom(a), MuteTrack(room="r", participant_sid="PA_a", track_sid="TR_a", muted=True))
    assert a.muted == [("TR_a", True)]
    assert (a.sent[0].mute.sid, a.sent[0].mute.muted) == ("TR_a", True)
    assert models.TrackInfo.FromString(base64.b64decode(result.payload)) == models.TrackInfo(sid="TR_a", name="mic",
                                                                                             muted=True)
    with pytest.raises(CommandError, match="track does not exist"):
        await apply(FakeRoom(a), MuteTrack(room="r", participant_sid="PA_a", track_sid="TR_x", muted=True))


async def test_update_builds_the_request_the_session_applies() -> None:
    a = alice()
    result = await apply(FakeRoom(a), UpdateParticipant(room="r", participant_sid="PA_a", name="Al", metadata="m",
                                                        attributes={"k": "v", "gone": ""}))
    [request] = a.updates
    assert (request.name, request.metadata, dict(request.attributes)) == ("Al", "m", {"k": "v", "gone": ""})
    assert not request.HasField("permission")  # absent means unchanged
    assert models.ParticipantInfo.FromString(base64.b64decode(result.payload)).name == "Al"

    await apply(FakeRoom(a), UpdateParticipant(room="r", participant_sid="PA_a",
                                               permission=PermissionSpec(can_publish=False, can_publish_sources=[2])))
    permission = a.updates[-1].permission
    assert a.updates[-1].HasField("permission")
    assert (permission.can_publish, permission.can_subscribe, list(permission.can_publish_sources)) == \
        (False, True, [2])


async def test_subscriptions_arrive_as_the_clients_own_frame() -> None:
    a = alice()
    await apply(FakeRoom(a), UpdateSubscriptions(
        room="r", participant_sid="PA_a", subscribe=True, track_sids=["TR_b"],
        participant_tracks=[ParticipantTrackSids(participant_sid="PA_b", track_sids=["TR_b"])]))
    [frame] = a.frames
    assert frame.WhichOneof("message") == "subscription"
    assert (list(frame.subscription.track_sids), frame.subscription.subscribe) == (["TR_b"], True)
    assert [(p.participant_sid, list(p.track_sids)) for p in frame.subscription.participant_tracks] == \
        [("PA_b", ["TR_b"])]


# ---- RoomApi (room service) -> wire -> apply_command (media node) ---------------------------

def _env(payload: EventPayload) -> Envelope:
    return Envelope.new(payload, dc="dc1", node="room-1", room="r", ts=1_000)


@pytest.fixture
def api_and_room() -> tuple[RoomApi, FakeRoom, list[MediaCommand]]:
    registry = RoomRegistry()
    registry.apply(_env(RoomCreated(sid="RM_r", name="r", project="p")))
    registry.apply(_env(ParticipantJoined(sid="PA_a", identity="alice", room_sid="RM_r", node="media-1")))
    track = TrackPayload(sid="TR_a", participant_sid="PA_a", kind=TrackKind.AUDIO)
    registry.apply(_env(TrackPublished(node="media-1", track=track)))
    room = FakeRoom(alice())
    sent: list[MediaCommand] = []

    async def send_command(node: str, command: MediaCommand) -> CommandResult:
        assert node == "media-1"
        decoded = decode_media_command(command.encode())
        sent.append(decoded)
        return await apply(room, decoded)

    async def emit(payload: EventPayload, room_name: str) -> None:
        registry.apply(_env(payload))

    return RoomApi(registry, send_command, emit), room, sent


async def call(api: RoomApi, method: str, request: Message) -> Any:
    return await api.call(method, request.SerializeToString(), "p")


async def test_room_api_update_participant(api_and_room: tuple[RoomApi, FakeRoom, list[MediaCommand]]) -> None:
    api, room, sent = api_and_room
    info = await call(api, "UpdateParticipant", room_pb.UpdateParticipantRequest(
        room="r", identity="alice", name="Al", attributes={"k": "v"},
        permission=models.ParticipantPermission(can_publish=False, can_subscribe_metrics=True)))
    assert info.name == "Al"
    [command] = sent
    assert isinstance(command, UpdateParticipant) and command.permission is not None
    request = room.sessions["PA_a"].updates[0]
    assert request.permission == models.ParticipantPermission(can_publish=False, can_subscribe_metrics=True)
    await call(api, "UpdateParticipant", room_pb.UpdateParticipantRequest(room="r", identity="alice", metadata="m"))
    assert not room.sessions["PA_a"].updates[1].HasField("permission")


async def test_room_api_send_data(api_and_room: tuple[RoomApi, FakeRoom, list[MediaCommand]]) -> None:
    api, room, sent = api_and_room
    await call(api, "SendData", room_pb.SendDataRequest(room="r", data=b"\x00\xff", kind=models.DataPacket.Kind.LOSSY,
                                                        topic="t", destination_identities=["alice"], nonce=b"\x07"))
    assert sent == [SendData(room="r", data=b"\x00\xff", topic="t", destination_identities=["alice"], nonce=b"\x07",
                             reliable=False)]
    assert len(room.sessions["PA_a"].delivered) == 1


async def test_room_api_mute_subscriptions_remove_and_metadata(
        api_and_room: tuple[RoomApi, FakeRoom, list[MediaCommand]]) -> None:
    api, room, sent = api_and_room
    answer = await call(api, "MutePublishedTrack", room_pb.MuteRoomTrackRequest(room="r", identity="alice",
                                                                               track_sid="TR_a", muted=True))
    assert answer.track.sid == "TR_a" and answer.track.muted
    await call(api, "UpdateSubscriptions", room_pb.UpdateSubscriptionsRequest(
        room="r", identity="alice", track_sids=["TR_b"], subscribe=True,
        participant_tracks=[models.ParticipantTracks(participant_sid="PA_b", track_sids=["TR_b"])]))
    updated = await call(api, "UpdateRoomMetadata", room_pb.UpdateRoomMetadataRequest(room="r", metadata="new"))
    await call(api, "RemoveParticipant", room_pb.RoomParticipantIdentity(room="r", identity="alice"))
    await call(api, "DeleteRoom", room_pb.DeleteRoomRequest(room="r"))
    assert [type(c) for c in sent] == [MuteTrack, UpdateSubscriptions, UpdateRoomMetadata, RemoveParticipant, CloseRoom]
    assert sent[1] == UpdateSubscriptions(room="r", participant_sid="PA_a", subscribe=True, track_sids=["TR_b"],
                                          participant_tracks=[ParticipantTrackSids(participant_sid="PA_b",
                                                                                   track_sids=["TR_b"])])
    assert updated.metadata == room.spec.metadata == "new"
    assert room.sessions["PA_a"].closed == [models.DisconnectReason.PARTICIPANT_REMOVED,
                                            models.DisconnectReason.ROOM_DELETED]
