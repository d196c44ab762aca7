"""RoomService commands, room service -> the media node hosting the room (`ctl.media.<node>.command`).

One model per operation, told apart on the wire by `op`; `MediaCommand` is their union and
`decode_media_command` the only way in, so a media node sees a typed command or a clear
`ControlDecodeError` (unknown op, missing or wrong fields, not JSON), never a bag of optional
fields. Fields are typed values, not protobuf: the room service reads the client's RoomService
request and the media node builds whatever its sessions need.

The answer, `CommandResult`, carries livekit protobuf on purpose: RoomService answers the client
with the node's own `TrackInfo` / `ParticipantInfo`, every field of it.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from livekit.protocol import models
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from shared.contracts.control import ControlDecodeError, ControlMessage, PermissionSpec


class RoomCommand(ControlMessage):
    """A command for the sessions of one room on the node."""

    room: str


class ParticipantCommand(RoomCommand):
    """A command for one session; the node answers 'participant does not exist' without it."""

    participant_sid: str


class RemoveParticipant(ParticipantCommand):
    op: Literal["remove"] = "remove"
    reason: int = 0  # livekit DisconnectReason; 0: PARTICIPANT_REMOVED


class MuteTrack(ParticipantCommand):
    """The publisher is told to mute (or unmute) one of its tracks; everyone sees the change."""

    op: Literal["mute"] = "mute"
    track_sid: str
    muted: bool


class UpdateParticipant(ParticipantCommand):
    """RoomService.UpdateParticipant, with its 'unchanged' conventions."""

    op: Literal["update"] = "update"
    metadata: str = ""  # empty: unchanged
    name: str = ""  # empty: unchanged
    attributes: dict[str, str] = {}  # merged; an empty value deletes the key
    permission: PermissionSpec | None = None  # None: unchanged


class ParticipantTrackSids(ControlMessage):
    participant_sid: str
    track_sids: list[str] = []


class UpdateSubscriptions(ParticipantCommand):
    """Subscribe (or unsubscribe) the participant as if its client had sent UpdateSubscription."""

    op: Literal["subscriptions"] = "subscriptions"
    subscribe: bool
    track_sids: list[str] = []
    participant_tracks: list[ParticipantTrackSids] = []


class SendData(RoomCommand):
    """A data packet from the server to the room's participants (all, or the destinations)."""

    # bytes travel as base64 in the JSON form (pydantic's default, UTF-8, cannot carry binary)
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    op: Literal["send_data"] = "send_data"
    data: bytes
    topic: str = ""
    destination_identities: list[str] = []  # empty: everyone
    nonce: bytes = b""
    reliable: bool = True  # livekit's default kind, RELIABLE


class CloseRoom(RoomCommand):
    op: Literal["close_room"] = "close_room"
    reason: int = 0  # livekit DisconnectReason; 0: ROOM_DELETED


class UpdateRoomMetadata(RoomCommand):
    op: Literal["room_metadata"] = "room_metadata"
    metadata: str


MediaCommand = Annotated[
    RemoveParticipant | MuteTrack | UpdateParticipant | UpdateSubscriptions | SendData | CloseRoom
    | UpdateRoomMetadata,
    Field(discriminator="op"),
]
MEDIA_COMMANDS: tuple[type[RoomCommand], ...] = get_args(get_args(MediaCommand)[0])
# Commands a node answers with success when it no longer hosts the room: there is nobody left
# to act on. The others need a participant, so a missing room is an error for them.
ROOM_WIDE_OPS = frozenset(command.model_fields["op"].default for command in MEDIA_COMMANDS
                          if not issubclass(command, ParticipantCommand))

_ADAPTER: TypeAdapter[MediaCommand] = TypeAdapter(MediaCommand)
_KNOWN_OPS = ", ".join(sorted(command.model_fields["op"].default for command in MEDIA_COMMANDS))


def decode_media_command(raw: bytes) -> MediaCommand:
    """The typed command in `raw`; ControlDecodeError says what is wrong with it."""
    try:
        return _ADAPTER.validate_json(raw)
    except ValidationError as exc:
        kinds = {error["type"] for error in exc.errors()}
        if "union_tag_invalid" in kinds:
            op = exc.errors()[0].get("ctx", {}).get("tag", "?")
            raise ControlDecodeError(f"unknown media command op {op!r} (known: {_KNOWN_OPS})") from None
        if "union_tag_not_found" in kinds:
            raise ControlDecodeError(f"media command without an op (known: {_KNOWN_OPS})") from None
        raise ControlDecodeError(f"malformed media command: {exc.error_count()} error(s): {exc}") from None


class CommandResult(ControlMessage):
    ok: bool = True
    error: str = ""
    payload: str = ""  # base64 protobuf answer (e.g. the updated ParticipantInfo)


def permission_spec(permission: models.ParticipantPermission) -> PermissionSpec:
    """A livekit permission as the contracts carry it (every field of it)."""
    return PermissionSpec(
        can_subscribe=permission.can_subscribe, can_publish=permission.can_publish,
        can_publish_data=permission.can_publish_data, can_publish_sources=list(permission.can_publish_sources),
        can_update_metadata=permission.can_update_metadata, hidden=permission.hidden,
        recorder=permission.recorder, agent=permission.agent, can_subscribe_metrics=permission.can_subscribe_metrics,
        can_manage_agent_session=permission.can_manage_agent_session,
    )
