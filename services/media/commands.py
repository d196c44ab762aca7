"""RoomService commands applied to the sessions this node hosts (sent by the room service)."""

from __future__ import annotations

import base64

from livekit.protocol import models, rtc
from livekit.protocol import room as room_pb

from shared.contracts.control import CommandResult, MediaCommand
from shared.errors import MediaError

from .data import server_data
from .room import NodeRoom


class CommandError(MediaError):
    pass


def _b64(message: object) -> str:
    return base64.b64encode(message.SerializeToString()).decode()  # type: ignore[attr-defined]


async def apply_command(room: NodeRoom, command: MediaCommand) -> CommandResult:
    op = command.op
    if op == "close_room":
        for session in list(room.sessions.values()):
            await session.close(command.reason or models.DisconnectReason.ROOM_DELETED)
        return CommandResult()
    if op == "send_data":
        request = room_pb.SendDataRequest.FromString(base64.b64decode(command.payload))
        reliable = request.kind == models.DataPacket.Kind.RELIABLE
        destinations = list(request.destination_identities)
        packet = server_data(request.data, request.topic, destinations, reliable, request.nonce)
        for session in list(room.sessions.values()):
            if destinations and session.identity not in destinations:
                continue
            session.deliver_data(packet, reliable)
        return CommandResult()
    if op == "room_metadata":
        updated = models.Room.FromString(base64.b64decode(command.payload))
        room.spec.metadata = updated.metadata
        room.broadcast(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=room.proto())))
        return CommandResult()

    session = room.sessions.get(command.participant_sid)
    if session is None:
        raise CommandError("participant does not exist")
    if op == "remove":
        await session.close(command.reason or models.DisconnectReason.PARTICIPANT_REMOVED)
        return CommandResult()
    if op == "mute":
        track = session.tracks.get(command.track_sid)
        if track is None:
            raise CommandError("track does not exist")
        # The publisher is told to mute (its SDK stops sending), and everyone sees the change.
        session.send(rtc.SignalResponse(mute=rtc.MuteTrackRequest(sid=track.sid, muted=command.muted)))
        session.set_muted(track, command.muted)
        return CommandResult(payload=_b64(track.info))
    if op == "update":
        request = room_pb.UpdateParticipantRequest.FromString(base64.b64decode(command.payload))
        session.apply_update(request)
        return CommandResult(payload=_b64(session.info))
    if op == "subscriptions":
        request = room_pb.UpdateSubscriptionsRequest.FromString(base64.b64decode(command.payload))
        update = rtc.UpdateSubscription(track_sids=request.track_sids, subscribe=request.subscribe,
                                        participant_tracks=request.participant_tracks)
        await session.handle_frame(rtc.SignalRequest(subscription=update).SerializeToString())
        return CommandResult()
    raise CommandError(f"unknown command {op!r}")

