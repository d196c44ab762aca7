from __future__ import annotations

import struct

from meshrtc.lab.probe import PingResult, checksum, echo_request, parse_echo_reply


def test_an_echo_request_checksums_to_zero() -> None:
    packet = echo_request(0x1234, 7, b"payload!")
    assert packet[0] == 8
    assert checksum(packet) == 0


def _reply(ident: int, seq: int, kind: int = 0) -> bytes:
    ip_header = bytes([0x45]) + bytes(19)
    return ip_header + struct.pack("!BBHHH", kind, 0, 0, ident, seq) + b"data"


def test_only_our_echo_replies_are_taken() -> None:
    assert parse_echo_reply(_reply(42, 3), ident=42) == 3
    assert parse_echo_reply(_reply(41, 3), ident=42) is None
    assert parse_echo_reply(_reply(42, 3, kind=8), ident=42) is None  # our own request, looped back
    assert parse_echo_reply(b"\x45" + bytes(10), ident=42) is None


def test_loss_percent() -> None:
    assert PingResult("x", sent=10, received=7).loss_percent == 30.0
    assert PingResult("x").loss_percent == 100.0
