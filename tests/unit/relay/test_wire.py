from __future__ import annotations

import hashlib

import pytest

from services.relay.wire import (
    HEADER_SIZE,
    MAX_ROUTE,
    TAG_SIZE,
    Kind,
    WanHeader,
    WanWireError,
    check_route,
    deliver_mask,
    pack_route,
    parse_header,
)
from shared.relay_wire import LOCAL_HEADER_SIZE, LocalType, LocalWireError, encode_local, parse_local, stream_id


def test_stream_id_is_the_documented_hash() -> None:
    digest = hashlib.blake2b(b"TR_abc", digest_size=8).digest()
    assert stream_id("TR_abc") == int.from_bytes(digest, "big")
    assert stream_id("TR_abc") != stream_id("TR_abd")
    assert 0 <= stream_id("TR_x") < 2**64


def test_local_wire_layout_matches_the_contract() -> None:
    datagram = encode_local(LocalType.KEYFRAME, 0x0102030405060708, 2)
    assert datagram == bytes([3, 1, 2, 3, 4, 5, 6, 7, 8, 2])
    assert LOCAL_HEADER_SIZE == 10
    assert parse_local(encode_local(LocalType.RTP, 7, 255, b"rtp")) == (LocalType.RTP, 7, 255, b"rtp")


@pytest.mark.parametrize("datagram", [b"", b"\x01" * 9, bytes([9]) + b"\x00" * 9])
def test_local_wire_rejects_short_and_unknown(datagram: bytes) -> None:
    with pytest.raises(LocalWireError):
        parse_local(datagram)


def test_wan_header_round_trip() -> None:
    header = WanHeader(Kind.RTP, (0, 2, 1), 1, deliver_mask([2, 1]), 12345, stream=99, layer=1)
    packed = header.pack()
    assert len(packed) == HEADER_SIZE
    parsed = parse_header(packed + b"\x00" * TAG_SIZE)
    assert (parsed.kind, parsed.route, parsed.hop, parsed.deliver, parsed.counter, parsed.stream, parsed.layer) == (
        Kind.RTP, (0, 2, 1), 1, 0b110, 12345, 99, 1)
    assert (parsed.sender, parsed.receiver) == (0, 2)


@pytest.mark.parametrize(("route", "hop", "reason"), [
    ((0, 1, 0), 1, "route_loop"),  # repeats a DC
    ((0, 1, 2, 3, 4), 1, "route_invalid"),  # longer than MAX_ROUTE
    ((0, 1), 2, "route_invalid"),  # hop past the end
    ((0, 1), 0, "route_invalid"),  # hop 0 is the origin itself
    ((0,), 1, "route_invalid"),
])
def test_routes_that_could_loop_or_overrun_are_rejected(route: tuple[int, ...], hop: int, reason: str) -> None:
    with pytest.raises(WanWireError) as info:
        check_route(route, hop)
    assert info.value.reason == reason


def test_parse_header_rejects_garbage() -> None:
    good = WanHeader(Kind.PROBE, (1, 0), 1, 1, 5).pack() + b"\x00" * TAG_SIZE
    with pytest.raises(WanWireError, match="malformed"):
        parse_header(good[:20])
    with pytest.raises(WanWireError, match="version"):
        parse_header(b"\x02" + good[1:])
    with pytest.raises(WanWireError, match="kind"):
        parse_header(good[:1] + b"\x63" + good[2:])
    with pytest.raises(WanWireError, match="route"):
        parse_header(good[:2] + bytes([MAX_ROUTE + 1]) + good[3:])


def test_pack_route_pads_to_four() -> None:
    assert pack_route((3, 1)) == bytes([3, 1, 255, 255])
