"""The typed RoomService commands on the wire: each one round-trips, and anything else is a
clear ControlDecodeError."""

from __future__ import annotations

import base64
import json

import pytest
from livekit.protocol import models

from shared.contracts.control import ControlDecodeError, PermissionSpec
from shared.contracts.media_commands import (
    MEDIA_COMMANDS,
    ROOM_WIDE_OPS,
    CloseRoom,
    MediaCommand,
    MuteTrack,
    ParticipantCommand,
    ParticipantTrackSids,
    RemoveParticipant,
    SendData,
    UpdateParticipant,
    UpdateRoomMetadata,
    UpdateSubscriptions,
    decode_media_command,
    permission_spec,
)

EXAMPLES: list[MediaCommand] = [
    RemoveParticipant(room="r", participant_sid="PA_a", reason=models.DisconnectReason.DUPLICATE_IDENTITY),
    MuteTrack(room="r", participant_sid="PA_a", track_sid="TR_a", muted=True),
    UpdateParticipant(room="r", participant_sid="PA_a", metadata="m", name="Alice", attributes={"k": "v", "gone": ""},
                      permission=PermissionSpec(can_publish=False, can_publish_sources=[1, 2])),
    UpdateParticipant(room="r", participant_sid="PA_a", name="only the name"),
    UpdateSubscriptions(room="r", participant_sid="PA_a", subscribe=False, track_sids=["TR_a"],
                        participant_tracks=[ParticipantTrackSids(participant_sid="PA_b", track_sids=["TR_b", "TR_c"])]),
    SendData(room="r", data=b"\x00\xff\xfe binary", topic="chat", destination_identities=["bob"], nonce=b"\x01\x02",
             reliable=False),
    CloseRoom(room="r", reason=models.DisconnectReason.ROOM_DELETED),
    UpdateRoomMetadata(room="r", metadata="new"),
]


def test_examples_cover_every_command() -> None:
    assert {type(c) for c in EXAMPLES} == set(MEDIA_COMMANDS)


@pytest.mark.parametrize("command", EXAMPLES, ids=lambda c: c.op)
def test_round_trip(command: MediaCommand) -> None:
    decoded = decode_media_command(command.encode())
    assert type(decoded) is type(command)
    assert decoded == command


def test_ops_are_distinct_and_on_the_wire() -> None:
    ops = [json.loads(c.encode())["op"] for c in EXAMPLES]
    assert len({command.model_fields["op"].default for command in MEDIA_COMMANDS}) == len(MEDIA_COMMANDS)
    assert set(ops) == {command.model_fields["op"].default for command in MEDIA_COMMANDS}


def test_binary_data_travels_as_base64() -> None:
    wire = json.loads(SendData(room="r", data=b"\xff\x00", nonce=b"\xfe").encode())
    assert (base64.urlsafe_b64decode(wire["data"]), base64.urlsafe_b64decode(wire["nonce"] + "==")) == \
        (b"\xff\x00", b"\xfe")


def test_update_without_permission_keeps_it_absent() -> None:
    decoded = decode_media_command(UpdateParticipant(room="r", participant_sid="PA_a").encode())
    assert isinstance(decoded, UpdateParticipant) and decoded.permission is None


def test_room_wide_ops_are_the_commands_without_a_participant() -> None:
    assert ROOM_WIDE_OPS == {"close_room", "send_data", "room_metadata"}
    assert all(issubclass(c, ParticipantCommand) == (c.model_fields["op"].default not in ROOM_WIDE_OPS)
               for c in MEDIA_COMMANDS)


@pytest.mark.parametrize(("raw", "message"), [
    (b'{"op": "explode", "room": "r"}', "unknown media command op 'explode'"),
    (b'{"room": "r"}', "media command without an op"),
    (b'{"op": "mute", "room": "r", "participant_sid": "PA_a"}', "malformed media command"),  # no track_sid
    (b'{"op": "send_data", "room": "r", "data": "not base64!"}', "malformed media command"),
    (b'{"op": "update", "room": "r", "participant_sid": "PA_a", "permission": 3}', "malformed media command"),
    (b"\xff\xfe garbage", "malformed media command"),
    (b"[1, 2]", "malformed media command"),
    (b"", "malformed media command"),
])
def test_anything_else_is_a_clear_decode_error(raw: bytes, message: str) -> None:
    with pytest.raises(ControlDecodeError, match=message):
        decode_media_command(raw)


def test_permission_spec_keeps_every_field_of_the_protobuf() -> None:
    """UpdateParticipant carries the permission as a PermissionSpec; the node rebuilds the
    protobuf from it, which must equal what the client sent."""
    names = [f.name for f in models.ParticipantPermission.DESCRIPTOR.fields]
    everything = models.ParticipantPermission(
        can_publish_sources=[models.TrackSource.CAMERA, models.TrackSource.MICROPHONE])
    for name in names:
        if name != "can_publish_sources":
            setattr(everything, name, True)
    assert models.ParticipantPermission(**permission_spec(everything).model_dump()) == everything
    assert models.ParticipantPermission(**permission_spec(models.ParticipantPermission()).model_dump()) == \
        models.ParticipantPermission()
