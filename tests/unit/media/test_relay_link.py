"""RelayLink: the media node's UDP socket towards its DC's relay (real sockets on loopback)."""

from __future__ import annotations

import asyncio
import socket
import time

from services.media.relay_link import RelayLink, TrackExports
from services.media.rtp import rtcp
from shared.relay_wire import LOCAL_HEADER_SIZE, NOT_SIMULCAST, LocalType, encode_local, parse_local, stream_id

TYPE_RTP, TYPE_RTCP, TYPE_KEYFRAME = LocalType.RTP, LocalType.RTCP, LocalType.KEYFRAME
HEADER_SIZE, NO_LAYER = LOCAL_HEADER_SIZE, NOT_SIMULCAST


def header(kind: int, stream: int, layer: int = NOT_SIMULCAST) -> bytes:
    return encode_local(kind, stream, layer)


def parse_header(data: bytes) -> tuple[int, int, int]:
    return parse_local(data)[:3]


class FakeTrackSink:
    """A track-shaped recorder: what the link hands to remote tracks / exported tracks."""

    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.stream = stream_id(sid)
        self.rtp: list[tuple[str, bytes]] = []
        self.rtcp: list[object] = []
        self.keyframes: list[int] = []
        self.top_layer = 2
        self.layers = [0, 1, 2]
        self.closed = False
        self.exports: TrackExports | None = None

    def on_rtp(self, rid: str, packet: bytes) -> None:
        self.rtp.append((rid, packet))

    def on_publisher_rtcp(self, packet: object) -> None:
        self.rtcp.append(packet)

    def request_keyframe(self, layer: int) -> None:
        self.keyframes.append(layer)


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    return sock


async def test_incoming_datagrams_reach_their_tracks_and_garbage_is_counted() -> None:
    link = RelayLink("127.0.0.1", "127.0.0.1")
    link.start()
    remote, local = FakeTrackSink("TR_remote"), FakeTrackSink("TR_local")
    link.remote[remote.stream] = remote  # type: ignore[assignment]
    link.exported[local.stream] = local  # type: ignore[assignment]
    sender = udp()
    try:
        sr = rtcp.build_sr(1234, 5 << 32, 900, 10, 1000)
        for data in (header(TYPE_RTP, remote.stream, 0) + b"rtp-q",
                     header(TYPE_RTP, remote.stream, NO_LAYER) + b"plain",
                     header(TYPE_RTCP, remote.stream) + sr, header(TYPE_KEYFRAME, local.stream, 1),
                     header(TYPE_KEYFRAME, local.stream), b"\x07garbage-garbage", header(TYPE_RTP, 42, 0) + b"x",
                     header(TYPE_RTCP, remote.stream) + b"\x00\x01"):
            sender.sendto(data, link.address)
        deadline = time.monotonic() + 2
        while link.packets_in < 8 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert remote.rtp == [("q", b"rtp-q"), ("", b"plain")]
        assert [p.ssrc for p in remote.rtcp] == [1234]  # type: ignore[attr-defined]
        assert local.keyframes == [1, 0, 1, 2]  # a request without a layer asks every layer
        assert (link.dropped_malformed, link.dropped_unknown) == (2, 1)
    finally:
        sender.close()
        link.close()


async def test_exports_send_until_their_soft_state_lapses() -> None:
    link = RelayLink("127.0.0.1", "127.0.0.1")
    relay_a, relay_b = udp(), udp()
    track = FakeTrackSink("TR_cam")
    try:
        link.export(track, relay_a.getsockname(), ttl_s=5)  # type: ignore[arg-type]
        link.export(track, relay_b.getsockname(), ttl_s=0.05)  # type: ignore[arg-type]
        assert track.exports is not None and link.exported[track.stream] is track
        track.exports.send_rtp("h", b"\x80\x60rtp")
        for relay in (relay_a, relay_b):
            assert parse_header(relay.recv(2048)) == (TYPE_RTP, track.stream, 1)
        track.exports.send_sender_report(rtcp.SenderReport(7, 1 << 32, 90, 1, 2))
        data = relay_a.recv(2048)
        assert parse_header(data)[0] == TYPE_RTCP
        assert rtcp.parse_compound(data[HEADER_SIZE:])[0].ssrc == 7  # type: ignore[attr-defined]
        relay_b.recv(2048)

        link.sweep(time.monotonic() + 1)  # relay_b's lapsed, relay_a's has not
        assert list(track.exports.targets) == [relay_a.getsockname()]
        link.export(track, relay_a.getsockname(), ttl_s=0)  # type: ignore[arg-type]
        assert track.stream not in link.exported
        assert link.packets_out == 4
    finally:
        relay_a.close()
        relay_b.close()
        link.close()
