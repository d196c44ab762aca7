"""RoomService (LiveKit's server API) answered from the event-sourced room state. Reads come
from the fold; changes are events (room metadata, creation, deletion) or commands to the media
nodes that host the participants (removal, mute, permissions, data)."""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable

from google.protobuf.message import DecodeError, Message
from livekit.protocol import models
from livekit.protocol import room as room_pb

from shared.contracts.media_commands import (
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
    permission_spec,
)
from shared.contracts.room_api import REQUESTS
from shared.errors import RoomError
from shared.events import EventPayload, RoomCreated, RoomFinished, RoomMetadataUpdated
from shared.ids import new_room_sid

from .admission import DEFAULT_DEPARTURE_TIMEOUT, DEFAULT_EMPTY_TIMEOUT
from .state import ParticipantState, RoomRegistry, RoomState

CommandSender = Callable[[str, MediaCommand], Awaitable[CommandResult]]
EventEmitter = Callable[[EventPayload, str], Awaitable[None]]


class ApiError(RoomError):
    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def b64(message: Message) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


def room_proto(room: RoomState) -> models.Room:
    return models.Room(
        sid=room.sid, name=room.name, empty_timeout=room.empty_timeout, departure_timeout=room.departure_timeout,
        max_participants=room.max_participants, creation_time=room.created_at_ms // 1000,
        creation_time_ms=room.created_at_ms, metadata=room.metadata,
        num_participants=sum(1 for p in room.participants.values() if not _hidden(p)),
        num_publishers=sum(1 for p in room.participants.values() if p.tracks),
    )


def _hidden(participant: ParticipantState) -> bool:
    info = participant_proto(participant)
    return info.permission.hidden


def participant_proto(participant: ParticipantState) -> models.ParticipantInfo:
    info = models.ParticipantInfo()
    if participant.info:
        try:
            info.ParseFromString(base64.b64decode(participant.info))
        except (DecodeError, ValueError):
            info = models.ParticipantInfo()
    info.sid, info.identity, info.name, info.metadata = (participant.sid, participant.identity, participant.name,
                                                         participant.metadata)
    info.attributes.clear()
    info.attributes.update(participant.attributes)
    info.state = models.ParticipantInfo.State.ACTIVE if participant.active else models.ParticipantInfo.State.JOINED
    info.joined_at_ms = info.joined_at_ms or participant.joined_at_ms
    info.joined_at = info.joined_at or participant.joined_at_ms // 1000
    del info.tracks[:]
    for track in participant.tracks.values():
        track_info = models.TrackInfo()
        if track.info:
            track_info.ParseFromString(base64.b64decode(track.info))
        track_info.sid = track.sid
        track_info.muted = track.muted
        info.tracks.append(track_info)
    info.is_publisher = bool(participant.tracks)
    return info


class RoomApi:
    def __init__(self, registry: RoomRegistry, send_command: CommandSender, emit: EventEmitter) -> None:
        self.registry = registry
        self.send_command = send_command
        self.emit = emit

    async def call(self, method: str, body: bytes, project: str) -> Message:
        request_type = REQUESTS.get(method)
        if request_type is None:
            raise ApiError("bad_route", f"unknown RoomService method {method}")
        try:
            request = request_type.FromString(body)
        except DecodeError as exc:
            raise ApiError("malformed", f"could not decode {request_type.__name__}: {exc}") from None
        handler = getattr(self, f"_{method}")
        return await handler(request, project)

    # ---- helpers --------------------------------------------------------------------------
    def _room(self, name: str) -> RoomState:
        if not name:
            raise ApiError("invalid_argument", "room name is required")
        room = self.registry.rooms.get(name)
        if room is None:
            raise ApiError("not_found", "requested room does not exist")
        return room

    def _participant(self, room: RoomState, identity: str) -> ParticipantState:
        participant = room.by_identity(identity)
        if participant is None:
            raise ApiError("not_found", "participant does not exist")
        return participant

    async def _command(self, node: str, command: MediaCommand) -> CommandResult:
        result = await self.send_command(node, command)
        if not result.ok:
            raise ApiError("internal", result.error or "media node refused the command")
        return result

    # ---- methods --------------------------------------------------------------------------
    async def _CreateRoom(self, request: room_pb.CreateRoomRequest, project: str) -> models.Room:
        if not request.name:
            raise ApiError("invalid_argument", "room name is required")
        existing = self.registry.rooms.get(request.name)
        if existing is not None:
            return room_proto(existing)
        created = RoomCreated(
            sid=new_room_sid(), name=request.name, project=project, metadata=request.metadata,
            empty_timeout=request.empty_timeout or DEFAULT_EMPTY_TIMEOUT,
            departure_timeout=request.departure_timeout or DEFAULT_DEPARTURE_TIMEOUT,
            max_participants=request.max_participants,
        )
        await self.emit(created, request.name)
        return room_proto(self.registry.rooms[request.name])

    async def _ListRooms(self, request: room_pb.ListRoomsRequest, project: str) -> room_pb.ListRoomsResponse:
        names = set(request.names)
        rooms = [room_proto(r) for r in self.registry.rooms.values() if not names or r.name in names]
        rooms.sort(key=lambda r: r.creation_time_ms)
        return room_pb.ListRoomsResponse(rooms=rooms)

    async def _DeleteRoom(self, request: room_pb.DeleteRoomRequest, project: str) -> room_pb.DeleteRoomResponse:
        room = self._room(request.room)
        for node in room.nodes():
            await self._command(node, CloseRoom(room=room.name, reason=models.DisconnectReason.ROOM_DELETED))
        await self.emit(RoomFinished(sid=room.sid, reason="deleted", merged_sids=room.merged_sids), room.name)
        return room_pb.DeleteRoomResponse()

    async def _ListParticipants(self, request: room_pb.ListParticipantsRequest,
                                project: str) -> room_pb.ListParticipantsResponse:
        room = self._room(request.room)
        participants = sorted(room.participants.values(), key=lambda p: p.joined_at_ms)
        return room_pb.ListParticipantsResponse(participants=[participant_proto(p) for p in participants])

    async def _GetParticipant(self, request: room_pb.RoomParticipantIdentity, project: str) -> models.ParticipantInfo:
        return participant_proto(self._participant(self._room(request.room), request.identity))

    async def _RemoveParticipant(self, request: room_pb.RoomParticipantIdentity,
                                 project: str) -> room_pb.RemoveParticipantResponse:
        room = self._room(request.room)
        participant = self._participant(room, request.identity)
        await self._command(participant.node, RemoveParticipant(
            room=room.name, participant_sid=participant.sid, reason=models.DisconnectReason.PARTICIPANT_REMOVED))
        return room_pb.RemoveParticipantResponse()

    async def _MutePublishedTrack(self, request: room_pb.MuteRoomTrackRequest,
                                  project: str) -> room_pb.MuteRoomTrackResponse:
        room = self._room(request.room)
        participant = self._participant(room, request.identity)
        if request.track_sid not in participant.tracks:
            raise ApiError("not_found", "track does not exist")
        result = await self._command(participant.node, MuteTrack(
            room=room.name, participant_sid=participant.sid, track_sid=request.track_sid, muted=request.muted))
        track = models.TrackInfo.FromString(base64.b64decode(result.payload))
        return room_pb.MuteRoomTrackResponse(track=track)

    async def _UpdateParticipant(self, request: room_pb.UpdateParticipantRequest,
                                 project: str) -> models.ParticipantInfo:
        room = self._room(request.room)
        participant = self._participant(room, request.identity)
        result = await self._command(participant.node, UpdateParticipant(
            room=room.name, participant_sid=participant.sid, metadata=request.metadata, name=request.name,
            attributes=dict(request.attributes),
            permission=permission_spec(request.permission) if request.HasField("permission") else None))
        return models.ParticipantInfo.FromString(base64.b64decode(result.payload))

    async def _UpdateSubscriptions(self, request: room_pb.UpdateSubscriptionsRequest,
                                   project: str) -> room_pb.UpdateSubscriptionsResponse:
        room = self._room(request.room)
        participant = self._participant(room, request.identity)
        await self._command(participant.node, UpdateSubscriptions(
            room=room.name, participant_sid=participant.sid, subscribe=request.subscribe,
            track_sids=list(request.track_sids),
            participant_tracks=[ParticipantTrackSids(participant_sid=p.participant_sid, track_sids=list(p.track_sids))
                                for p in request.participant_tracks]))
        return room_pb.UpdateSubscriptionsResponse()

    async def _SendData(self, request: room_pb.SendDataRequest, project: str) -> room_pb.SendDataResponse:
        room = self._room(request.room)
        command = SendData(room=room.name, data=request.data, topic=request.topic,
                           destination_identities=list(request.destination_identities), nonce=request.nonce,
                           reliable=request.kind == models.DataPacket.Kind.RELIABLE)
        for node in room.nodes():
            await self._command(node, command)
        return room_pb.SendDataResponse()

    async def _UpdateRoomMetadata(self, request: room_pb.UpdateRoomMetadataRequest, project: str) -> models.Room:
        room = self._room(request.room)
        await self.emit(RoomMetadataUpdated(sid=room.sid, metadata=request.metadata), room.name)
        updated = room_proto(room)
        for node in room.nodes():
            await self._command(node, UpdateRoomMetadata(room=room.name, metadata=updated.metadata))
        return updated


def now_ms() -> int:
    return int(time.time() * 1000)
