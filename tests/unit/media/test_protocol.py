"""LiveKit protobuf builders of the media node."""

from __future__ import annotations

import time

import pytest
from livekit.protocol import models, rtc

from services.media.protocol import (
    PING_INTERVAL,
    PING_TIMEOUT,
    PROTOCOL,
    join_response,
    leave,
    permission_proto,
    quality_from_rid,
    reconnect_response,
    room_proto,
    server_info,
    track_info_from_request,
)
from shared.contracts.control import PermissionSpec, RoomSpec

Q = models.VideoQuality
SRC = models.TrackSource


def participant(can_subscribe: bool = True) -> models.ParticipantInfo:
    return models.ParticipantInfo(sid="PA_me", identity="me",
                                  permission=models.ParticipantPermission(can_subscribe=can_subscribe))


def join(can_subscribe: bool = True) -> rtc.JoinResponse:
    room = room_proto(RoomSpec(name="lobby", sid="RM_1", creation_time_ms=1_700_000_000_123))
    others = [models.ParticipantInfo(sid="PA_o", identity="other")]
    response = join_response(room, participant(can_subscribe), others, node_id="node-1", region="eu")
    assert response.WhichOneof("message") == "join"
    return response.join


def semver(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("-")[0].split("."))


# --- join ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("can_subscribe", [True, False])
def test_subscriber_primary_iff_can_subscribe(can_subscribe: bool) -> None:
    assert join(can_subscribe).subscriber_primary is can_subscribe


def test_ping_settings_positive_and_timeout_longer() -> None:
    j = join()
    assert (j.ping_interval, j.ping_timeout) == (PING_INTERVAL, PING_TIMEOUT)
    assert 0 < j.ping_interval < j.ping_timeout


def test_server_version_semver_at_least_1_8() -> None:
    j = join()
    assert len(semver(j.server_info.version)) == 3
    assert semver(j.server_info.version) >= (1, 8, 0)
    assert j.server_version == j.server_info.version
    assert j.server_info.protocol == PROTOCOL
    assert (j.server_info.node_id, j.server_info.region, j.server_region) == ("node-1", "eu", "eu")
    assert j.server_info.edition == models.ServerInfo.Edition.Standard


def test_resume_enabled() -> None:
    assert join().client_configuration.resume_connection == models.ClientConfigSetting.ENABLED


def test_reconnect_response_carries_last_sequence_and_server() -> None:
    response = reconnect_response("node-1", "eu", 41)
    assert response.WhichOneof("message") == "reconnect"
    reconnect = response.reconnect
    assert reconnect.last_message_seq == 41
    assert (reconnect.server_info.node_id, reconnect.server_info.region) == ("node-1", "eu")
    assert reconnect.server_info.version and reconnect.server_info.protocol == PROTOCOL
    assert reconnect.client_configuration.resume_connection == models.ClientConfigSetting.ENABLED


def test_join_carries_room_and_participants() -> None:
    j = join()
    assert (j.room.sid, j.room.name) == ("RM_1", "lobby")
    assert (j.participant.sid, j.participant.identity) == ("PA_me", "me")
    assert [p.identity for p in j.other_participants] == ["other"]
    assert [c.mime for c in j.enabled_publish_codecs] == ["video/VP8", "audio/opus"]


def test_server_info_builder() -> None:
    info = server_info("n", "r")
    assert (info.node_id, info.region, info.protocol) == ("n", "r", PROTOCOL)


# --- leave --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("action", "can_reconnect"), [
    (rtc.LeaveRequest.Action.DISCONNECT, False),
    (rtc.LeaveRequest.Action.RESUME, True),
    (rtc.LeaveRequest.Action.RECONNECT, True),
])
def test_leave_can_reconnect_iff_not_disconnect(action: int, can_reconnect: bool) -> None:
    msg = leave(models.DisconnectReason.SERVER_SHUTDOWN, action)
    assert msg.WhichOneof("message") == "leave"
    assert msg.leave.can_reconnect is can_reconnect
    assert msg.leave.action == action
    assert msg.leave.reason == models.DisconnectReason.SERVER_SHUTDOWN


def test_leave_defaults_to_disconnect() -> None:
    msg = leave(models.DisconnectReason.PARTICIPANT_REMOVED)
    assert msg.leave.action == rtc.LeaveRequest.Action.DISCONNECT
    assert msg.leave.can_reconnect is False


# --- room / permission ---------------------------------------------------------------------------


def test_room_proto_fields() -> None:
    spec = RoomSpec(name="lobby", sid="RM_1", empty_timeout=30, departure_timeout=5, max_participants=4,
                    metadata="m", creation_time_ms=1_700_000_000_987)
    room = room_proto(spec, num_participants=3, num_publishers=2)
    assert (room.sid, room.name, room.empty_timeout, room.departure_timeout, room.max_participants) == (
        "RM_1", "lobby", 30, 5, 4)
    assert (room.creation_time, room.creation_time_ms) == (1_700_000_000, 1_700_000_000_987)
    assert (room.metadata, room.num_participants, room.num_publishers) == ("m", 3, 2)


def test_room_proto_without_creation_time_uses_now() -> None:
    before = int(time.time() * 1000)
    room = room_proto(RoomSpec(name="r"))
    assert before <= room.creation_time_ms <= int(time.time() * 1000)
    assert room.creation_time == room.creation_time_ms // 1000


def test_permission_proto_copies_everything() -> None:
    spec = PermissionSpec(can_subscribe=False, can_publish=True, can_publish_data=False, can_publish_sources=[1, 3],
                          can_update_metadata=True, hidden=True, recorder=True, agent=True)
    p = permission_proto(spec)
    assert (p.can_subscribe, p.can_publish, p.can_publish_data) == (False, True, False)
    assert list(p.can_publish_sources) == [SRC.CAMERA, SRC.SCREEN_SHARE]
    assert (p.can_update_metadata, p.hidden, p.recorder, p.agent) == (True, True, True, True)


# --- tracks -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rid", "quality"), [("q", Q.LOW), ("h", Q.MEDIUM), ("f", Q.HIGH), ("", Q.HIGH),
                                              ("x", Q.HIGH)])
def test_quality_from_rid(rid: str, quality: int) -> None:
    assert quality_from_rid(rid) == quality


def layer(quality: int, width: int) -> models.VideoLayer:
    return models.VideoLayer(quality=quality, width=width, height=width * 9 // 16)


def test_track_info_simulcast_layers_sorted() -> None:
    req = rtc.AddTrackRequest(cid="c1", name="cam", type=models.TrackType.VIDEO, source=SRC.CAMERA,
                              width=1280, height=720,
                              layers=[layer(Q.HIGH, 1280), layer(Q.LOW, 320), layer(Q.MEDIUM, 640)])
    info = track_info_from_request("TR_V1", req)
    assert info.sid == "TR_V1"
    assert [lay.quality for lay in info.layers] == [Q.LOW, Q.MEDIUM, Q.HIGH]
    assert [lay.width for lay in info.layers] == [320, 640, 1280]
    assert info.simulcast is True
    assert (info.type, info.name, info.width, info.height, info.source) == (
        models.TrackType.VIDEO, "cam", 1280, 720, SRC.CAMERA)
    assert info.stream == "camera"
    assert len(info.codecs) == 0
    assert info.version.unix_micro > 0


def test_track_info_single_layer_is_not_simulcast() -> None:
    req = rtc.AddTrackRequest(type=models.TrackType.VIDEO, source=SRC.CAMERA, layers=[layer(Q.HIGH, 640)])
    info = track_info_from_request("TR_V2", req)
    assert info.simulcast is False
    assert len(info.layers) == 1


def test_track_info_no_layers_is_not_simulcast() -> None:
    info = track_info_from_request("TR_A", rtc.AddTrackRequest(type=models.TrackType.AUDIO, source=SRC.MICROPHONE))
    assert info.simulcast is False
    assert len(info.layers) == 0


def test_codecs_left_empty_even_when_requested() -> None:
    req = rtc.AddTrackRequest(type=models.TrackType.VIDEO, layers=[layer(Q.HIGH, 640)],
                              simulcast_codecs=[rtc.SimulcastCodec(codec="vp8", cid="c1")])
    assert len(track_info_from_request("TR_V3", req).codecs) == 0


@pytest.mark.parametrize(("source", "stream"), [
    (SRC.CAMERA, "camera"), (SRC.MICROPHONE, "camera"), (SRC.UNKNOWN, "camera"),
    (SRC.SCREEN_SHARE, "screen"), (SRC.SCREEN_SHARE_AUDIO, "screen"),
])
def test_default_stream_by_source(source: int, stream: str) -> None:
    assert track_info_from_request("TR_x", rtc.AddTrackRequest(source=source)).stream == stream


def test_explicit_stream_kept() -> None:
    assert track_info_from_request("TR_x", rtc.AddTrackRequest(source=SRC.SCREEN_SHARE, stream="s2")).stream == "s2"


def test_audio_flags_and_features_copied() -> None:
    req = rtc.AddTrackRequest(type=models.TrackType.AUDIO, source=SRC.MICROPHONE, muted=True, disable_dtx=True,
                              disable_red=True, stereo=True, encryption=models.Encryption.GCM,
                              audio_features=[models.AudioTrackFeature.TF_STEREO,
                                              models.AudioTrackFeature.TF_NO_DTX])
    info = track_info_from_request("TR_A1", req)
    assert (info.muted, info.disable_dtx, info.disable_red, info.stereo) == (True, True, True, True)
    assert info.encryption == models.Encryption.GCM
    assert list(info.audio_features) == [models.AudioTrackFeature.TF_STEREO, models.AudioTrackFeature.TF_NO_DTX]
