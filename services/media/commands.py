"""RoomService commands applied to the sessions this node hosts (sent by the room service).

One handler per command type of `shared.contracts.media_commands.MediaCommand`, in `HANDLERS`
(a unit test checks that every member of the union has one).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from livekit.protocol import models, rtc
from livekit.protocol import room as room_pb

from shared.contracts.media_commands import (
    CloseRoom,
    CommandResult,
    MediaCommand,
    MuteTrack,
    RemoveParticipant,
    RoomCommand,
    SendData,
    UpdateParticipant,
    UpdateRoomMetadata,
    UpdateSubscriptions,
    permission_spec,
)
from shared.errors import MediaError

from .data import server_data
from .room import NodeRoom

__all__ = ["HANDLERS", "CommandError", "apply_command", "permission_spec"]


class CommandError(MediaError):
    pass


def _b64(message: object) -> str:
    return base64.b64encode(message.SerializeToString()).decode()  # type: ignore[attr-defined]


async def apply_command(room: NodeRoom, command: MediaCommand) -> CommandResult:
    handler = HANDLERS.get(type(command))
    if handler is None:  # a command type added to the union without a handler here
        raise CommandError(f"media command {command.op!r} is not handled by this node")
    return await handler(room, command)


S = TypeVar("S")


def _hosted(session: S | None) -> S:
    """The session a ParticipantCommand names, when this node hosts it."""
    if session is None:
        raise CommandError("participant does not exist")
    return session


async def _close_room(room: NodeRoom, command: CloseRoom) -> CommandResult:
    for session in list(room.sessions.values()):
        await session.close(command.reason or models.DisconnectReason.ROOM_DELETED)
    return CommandResult()


async def _send_data(room: NodeRoom, command: SendData) -> CommandResult:
    destinations = list(command.destination_identities)
    packet = server_data(command.data, command.topic, destinations, command.reliable, command.nonce)
    for session in list(room.sessions.values()):
        if destinations and session.identity not in destinations:
            continue
        session.deliver_data(packet, command.reliable)
    return CommandResult()


async def _room_metadata(room: NodeRoom, command: UpdateRoomMetadata) -> CommandResult:
    room.spec.metadata = command.metadata
    room.broadcast(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=room.proto())))
    return CommandResult()


async def _remove(room: NodeRoom, command: RemoveParticipant) -> CommandResult:
    session = _hosted(room.sessions.get(command.participant_sid))
    await session.close(command.reason or models.DisconnectReason.PARTICIPANT_REMOVED)
    return CommandResult()


async def _mute(room: NodeRoom, command: MuteTrack) -> CommandResult:
    session = _hosted(room.sessions.get(command.participant_sid))
    track = session.tracks.get(command.track_sid)
    if track is None:
        raise CommandError("track does not exist")
    # The publisher is told to mute (its SDK stops sending), and everyone sees the change.
    session.send(rtc.SignalResponse(mute=rtc.MuteTrackRequest(sid=track.sid, muted=command.muted)))
    session.set_muted(track, command.muted)
    return CommandResult(payload=_b64(track.info))


async def _update(room: NodeRoom, command: UpdateParticipant) -> CommandResult:
    session = _hosted(room.sessions.get(command.participant_sid))
    request = room_pb.UpdateParticipantRequest(room=command.room, metadata=command.metadata, name=command.name,
                                               attributes=command.attributes)
    if command.permission is not None:  # presence matters: no permission means 'unchanged'
        request.permission.CopyFrom(models.ParticipantPermission(**command.permission.model_dump()))
    session.apply_update(request)
    return CommandResult(payload=_b64(session.info))


async def _subscriptions(room: NodeRoom, command: UpdateSubscriptions) -> CommandResult:
    session = _hosted(room.sessions.get(command.participant_sid))
    update = rtc.UpdateSubscription(
        track_sids=command.track_sids, subscribe=command.subscribe,
        participant_tracks=[models.ParticipantTracks(participant_sid=p.participant_sid, track_sids=p.track_sids)
                            for p in command.participant_tracks])
    await session.handle_frame(rtc.SignalRequest(subscription=update).SerializeToString())
    return CommandResult()


# Any: each handler takes its own command type; the table is keyed by that type.
HANDLERS: dict[type[RoomCommand], Callable[[NodeRoom, Any], Awaitable[CommandResult]]] = {
    CloseRoom: _close_room,
    SendData: _send_data,
    UpdateRoomMetadata: _room_metadata,
    RemoveParticipant: _remove,
    MuteTrack: _mute,
    UpdateParticipant: _update,
    UpdateSubscriptions: _subscriptions,
}
