"""Builders for the LiveKit protobuf messages a media node sends. Pure functions."""

from __future__ import annotations

import time

from livekit.protocol import models, rtc

from shared.contracts.control import PermissionSpec, RoomSpec
from shared.service import VERSION

PROTOCOL = 17
PING_INTERVAL = 5
PING_TIMEOUT = 15


# livekit's generated stubs declare each enum as a subclass of int whose members are instances of
# it; at run time enum values are plain ints, and an int is what the protobuf constructors take.
# Hence the `type: ignore[arg-type]` where a contract's int becomes an enum field.


def permission_proto(spec: PermissionSpec) -> models.ParticipantPermission:
    return models.ParticipantPermission(
        can_subscribe=spec.can_subscribe, can_publish=spec.can_publish, can_publish_data=spec.can_publish_data,
        can_publish_sources=list(spec.can_publish_sources),  # type: ignore[arg-type]
        can_update_metadata=spec.can_update_metadata,
        hidden=spec.hidden, recorder=spec.recorder, agent=spec.agent,
    )


def room_proto(spec: RoomSpec, num_participants: int = 0, num_publishers: int = 0) -> models.Room:
    created_ms = spec.creation_time_ms or int(time.time() * 1000)
    return models.Room(
        sid=spec.sid, name=spec.name, empty_timeout=spec.empty_timeout, departure_timeout=spec.departure_timeout,
        max_participants=spec.max_participants, creation_time=created_ms // 1000, creation_time_ms=created_ms,
        metadata=spec.metadata, num_participants=num_participants, num_publishers=num_publishers,
        enabled_codecs=[models.Codec(mime="audio/opus"), models.Codec(mime="video/VP8"),
                        models.Codec(mime="video/H264")],
    )


def server_info(node_id: str, region: str) -> models.ServerInfo:
    return models.ServerInfo(edition=models.ServerInfo.Edition.Standard, version=VERSION, protocol=PROTOCOL,
                             region=region, node_id=node_id)


def join_response(
    room: models.Room,
    participant: models.ParticipantInfo,
    others: list[models.ParticipantInfo],
    node_id: str,
    region: str,
) -> rtc.SignalResponse:
    join = rtc.JoinResponse(
        room=room,
        participant=participant,
        other_participants=others,
        server_version=VERSION,
        server_info=server_info(node_id, region),
        subscriber_primary=participant.permission.can_subscribe,
        # Sessions outlive their WebSocket for a grace period and ICE-restart (resume.py).
        client_configuration=client_configuration(),
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
        enabled_publish_codecs=[models.Codec(mime="video/VP8"), models.Codec(mime="audio/opus")],
        server_region=region,
    )
    if not participant.permission.can_subscribe:
        join.subscriber_primary = False
    return rtc.SignalResponse(join=join)


def client_configuration() -> models.ClientConfiguration:
    return models.ClientConfiguration(resume_connection=models.ClientConfigSetting.ENABLED)


def reconnect_response(node_id: str, region: str, last_message_seq: int) -> rtc.SignalResponse:
    """The first frame of a resumed signal connection. `last_message_seq`: the last reliable
    data sequence received from this client, which resends everything after it."""
    return rtc.SignalResponse(reconnect=rtc.ReconnectResponse(
        client_configuration=client_configuration(), server_info=server_info(node_id, region),
        last_message_seq=last_message_seq))


def leave(reason: int, action: int = rtc.LeaveRequest.Action.DISCONNECT) -> rtc.SignalResponse:
    return rtc.SignalResponse(leave=rtc.LeaveRequest(
        can_reconnect=action != rtc.LeaveRequest.Action.DISCONNECT,
        reason=reason, action=action))  # type: ignore[arg-type]


def quality_from_rid(rid: str) -> int:
    return {"q": models.VideoQuality.LOW, "h": models.VideoQuality.MEDIUM,
            "f": models.VideoQuality.HIGH}.get(rid, models.VideoQuality.HIGH)


def track_info_from_request(sid: str, request: rtc.AddTrackRequest) -> models.TrackInfo:
    layers = sorted(request.layers, key=lambda layer: layer.quality)
    info = models.TrackInfo(
        sid=sid, type=request.type, name=request.name, muted=request.muted, width=request.width,
        height=request.height, source=request.source, layers=layers, disable_red=request.disable_red,
        disable_dtx=request.disable_dtx, stereo=request.stereo, encryption=request.encryption,
        stream=request.stream or ("screen" if request.source in (models.TrackSource.SCREEN_SHARE,
                                                                 models.TrackSource.SCREEN_SHARE_AUDIO)
                                  else "camera"),
        backup_codec_policy=request.backup_codec_policy, simulcast=len(layers) > 1,
        version=models.TimedVersion(unix_micro=int(time.time() * 1_000_000)),
    )
    info.audio_features.extend(request.audio_features)
    # `codecs` is left empty on purpose: JS switches its publish codec to codecs[0] when set.
    return info
