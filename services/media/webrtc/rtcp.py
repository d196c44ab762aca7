"""Byte-level RTCP helpers for the transport hooks (no aiortc objects, no allocation-heavy parsing).

Only what the adapter needs to route feedback to the right outgoing track, plus a PLI builder.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = [
    "PSFB",
    "PSFB_AFB",
    "PSFB_FIR",
    "PSFB_PLI",
    "RTCP_BYE",
    "RTCP_RR",
    "RTCP_SR",
    "RTPFB",
    "RTPFB_NACK",
    "build_pli",
    "feedback_media_ssrcs",
    "is_rtcp",
    "iter_rtcp",
]

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTPFB = 205
PSFB = 206

RTPFB_NACK = 1
PSFB_PLI = 1
PSFB_FIR = 4
PSFB_AFB = 15  # application layer feedback, e.g. REMB

_U32 = struct.Struct("!I")


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: second byte 192-223 is RTCP."""
    return len(data) > 1 and 191 < data[1] < 224


def iter_rtcp(compound: bytes) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(packet_type, fmt_or_count, packet_bytes)`` for each packet of a compound RTCP
    datagram. Stops at the first malformed header."""
    offset = 0
    size = len(compound)
    while offset + 4 <= size:
        first = compound[offset]
        if first >> 6 != 2:
            return
        length = 4 * (((compound[offset + 2] << 8) | compound[offset + 3]) + 1)
        end = offset + length
        if end > size:
            return
        yield compound[offset + 1], first & 0x1F, compound[offset:end]
        offset = end


def feedback_media_ssrcs(packet_type: int, fmt: int, packet: bytes) -> list[int]:
    """The media SSRCs an RTCP packet reports on or asks something of (the *sender's* SSRCs
    from the point of view of whoever receives this packet)."""
    size = len(packet)
    if packet_type in (RTCP_SR, RTCP_RR):
        start = 28 if packet_type == RTCP_SR else 8
        return [_U32.unpack_from(packet, start + 24 * i)[0] for i in range(fmt) if start + 24 * i + 4 <= size]
    if packet_type == RTPFB and size >= 12:
        return [_U32.unpack_from(packet, 8)[0]]
    if packet_type == PSFB and size >= 12:
        if fmt == PSFB_FIR:
            return [_U32.unpack_from(packet, off)[0] for off in range(12, size - 7, 8)]
        if fmt == PSFB_AFB and size >= 20 and packet[12:16] == b"REMB":
            count = packet[16]
            return [_U32.unpack_from(packet, 20 + 4 * i)[0] for i in range(count) if 24 + 4 * i <= size]
        return [_U32.unpack_from(packet, 8)[0]]
    return []


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """RTCP Picture Loss Indication (RFC 4585 section 6.3.1)."""
    return struct.pack("!BBHII", 0x80 | PSFB_PLI, PSFB, 2, sender_ssrc & 0xFFFFFFFF, media_ssrc & 0xFFFFFFFF)
