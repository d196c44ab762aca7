"""LiveKit's RoomService as it crosses the bus: which protobuf each method takes and answers.

The signal edge decodes a client's request with `REQUESTS` (protobuf or JSON) and re-encodes
the answer with `RESPONSES`; the room service decodes the forwarded call with `REQUESTS`. The
call itself travels as `shared.contracts.control.ApiCall` / `ApiResult` on
`room_request_subject(dc, "api")`.
"""

from __future__ import annotations

from google.protobuf.message import Message
from livekit.protocol import models
from livekit.protocol import room as room_pb

REQUESTS: dict[str, type[Message]] = {
    "CreateRoom": room_pb.CreateRoomRequest,
    "ListRooms": room_pb.ListRoomsRequest,
    "DeleteRoom": room_pb.DeleteRoomRequest,
    "ListParticipants": room_pb.ListParticipantsRequest,
    "GetParticipant": room_pb.RoomParticipantIdentity,
    "RemoveParticipant": room_pb.RoomParticipantIdentity,
    "MutePublishedTrack": room_pb.MuteRoomTrackRequest,
    "UpdateParticipant": room_pb.UpdateParticipantRequest,
    "UpdateSubscriptions": room_pb.UpdateSubscriptionsRequest,
    "SendData": room_pb.SendDataRequest,
    "UpdateRoomMetadata": room_pb.UpdateRoomMetadataRequest,
}

RESPONSES: dict[str, type[Message]] = {
    "CreateRoom": models.Room,
    "ListRooms": room_pb.ListRoomsResponse,
    "DeleteRoom": room_pb.DeleteRoomResponse,
    "ListParticipants": room_pb.ListParticipantsResponse,
    "GetParticipant": models.ParticipantInfo,
    "RemoveParticipant": room_pb.RemoveParticipantResponse,
    "MutePublishedTrack": room_pb.MuteRoomTrackResponse,
    "UpdateParticipant": models.ParticipantInfo,
    "UpdateSubscriptions": room_pb.UpdateSubscriptionsResponse,
    "SendData": room_pb.SendDataResponse,
    "UpdateRoomMetadata": models.Room,
}
