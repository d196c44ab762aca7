"""RemoteTrack: a track whose RTP arrives through the relay (real UDP on loopback)."""

from __future__ import annotations

import base64
import socket
import struct

import pytest
from livekit.protocol import models

from services.media.relay_link import RelayLink
from services.media.remote import LOSS_KEYFRAME_PACKETS, RemoteParticipant, RemoteTrack
from services.media.roster import RemoteRoster
from shared.events import Envelope, ParticipantJoined, TrackKind, TrackPayload, TrackPublished, TrackWire
from shared.relay_wire import LocalType, parse_local, stream_id

WIRE = TrackWire(kind="video", mime_type="video/VP8", clock_rate=90000, payload_types=[96])


def vp8_packet(seq: int, ssrc: int = 0x1234, keyframe: bool = False) -> bytes:
    header = struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, ssrc)
    # VP8 payload descriptor (S=1, partition 0) + a payload header whose P bit says key/inter frame
    return header + bytes([0x10, 0x00 if keyframe else 0x01, 0x00, 0x00])


def remote_track(link: RelayLink) -> RemoteTrack:
    roster = RemoteRoster("media-a")
    info = models.ParticipantInfo(sid="PA_b", identity="bob")
    roster.apply(Envelope.new(ParticipantJoined(sid="PA_b", room_sid="RM_1", identity="bob", node="media-b",
                                                info=base64.b64encode(info.SerializeToString()).decode()),
                              dc="dc2", node="media-b", room="r"))
    track_info = models.TrackInfo(sid="TR_v", type=models.TrackType.VIDEO)
    roster.apply(Envelope.new(TrackPublished(node="media-b", track=TrackPayload(
        sid="TR_v", participant_sid="PA_b", kind=TrackKind.VIDEO, wire=WIRE,
        info=base64.b64encode(track_info.SerializeToString()).decode())), dc="dc2", node="media-b", room="r"))
    state = roster.participants["PA_b"]
    return RemoteTrack(RemoteParticipant(state), state.tracks["TR_v"], link, "r", "proj")


def test_a_sequence_jump_asks_the_publisher_for_a_keyframe_through_the_relay() -> None:
    link = RelayLink("127.0.0.1", "127.0.0.1")
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay.bind(("127.0.0.1", 0))
    relay.settimeout(0.5)
    try:
        track = remote_track(link)
        track.relay = relay.getsockname()
        assert (track.origin_dc, track.origin_node, track.stream) == ("dc2", "media-b", stream_id("TR_v"))
        for seq in range(100, 110):
            track.on_rtp("", vp8_packet(seq, keyframe=seq == 100))
        track.on_rtp("", vp8_packet(108))  # reordered: no keyframe, no rewind
        track.on_rtp("", vp8_packet(111))  # one lost: NACKs can still repair that
        assert track.loss_keyframes == 0
        track.on_rtp("", vp8_packet(112 + LOSS_KEYFRAME_PACKETS))
        assert track.loss_keyframes == 1
        kind, stream, layer, _ = parse_local(relay.recv(64))
        assert (kind, stream, layer) == (LocalType.KEYFRAME, track.stream, 0)
        track.on_rtp("", vp8_packet(0xFFFF))  # far in the past after wrap-around arithmetic: ignored
        assert track.loss_keyframes == 1
        # still no keyframe: asked again once the throttle allows (the first ask may be lost)
        track._last_pli.clear()
        track.on_rtp("", vp8_packet(118))
        assert parse_local(relay.recv(64))[0] == LocalType.KEYFRAME
        track._last_pli.clear()
        track.on_rtp("", vp8_packet(119, keyframe=True))  # recovered: no more asking
        track._last_pli.clear()
        track.on_rtp("", vp8_packet(120))
        relay.settimeout(0.2)
        with pytest.raises(TimeoutError):
            relay.recv(64)
    finally:
        relay.close()
        link.close()
