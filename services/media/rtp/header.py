"""Zero-copy access to RTP fixed headers and RFC 8285 header extensions.

Everything here works directly on ``bytes`` / ``bytearray`` / ``memoryview`` buffers.
:class:`RtpHeader` is a reusable scratch object: the receive path keeps one per stream and
calls :meth:`RtpHeader.parse` for every packet, so no objects are created per packet apart
from the ints that ``struct`` returns.

Layout reminder (RFC 3550 §5.1)::

    0                   1                   2                   3
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    |                           timestamp                           |
    |                             SSRC                              |
    |                       CSRC list (CC x 4 bytes)                |
    | extension profile (0xBEDE / 0x100x) |  length in 32-bit words  |
    |                        extension data                         |
    |                            payload ...      | padding | count |
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = [
    "EXT_PROFILE_ONE_BYTE",
    "EXT_PROFILE_TWO_BYTE",
    "EXT_PROFILE_TWO_BYTE_MASK",
    "FIXED_HEADER",
    "RTP_HEADER_SIZE",
    "RtpHeader",
    "csrc_count",
    "extension_block",
    "find_extension",
    "get_extension",
    "has_extension",
    "has_padding",
    "header_length",
    "is_rtcp",
    "is_rtp",
    "iter_extensions",
    "marker",
    "payload_offset",
    "payload_type",
    "seq_newer",
    "sequence",
    "ssrc",
    "timestamp",
    "version",
]

RTP_HEADER_SIZE = 12
#: V/P/X/CC byte, M/PT byte, sequence, timestamp, SSRC.
FIXED_HEADER = struct.Struct("!BBHII")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_EXT_HEADER = struct.Struct("!HH")

#: RFC 8285 §4.2 one-byte header profile.
EXT_PROFILE_ONE_BYTE = 0xBEDE
#: RFC 8285 §4.3 two-byte header profile: 0x100 followed by 4 "appbits".
EXT_PROFILE_TWO_BYTE = 0x1000
EXT_PROFILE_TWO_BYTE_MASK = 0xFFF0

Buffer = bytes | bytearray | memoryview


# ---------------------------------------------------------------------------
# Demultiplexing
# ---------------------------------------------------------------------------


def is_rtcp(data: Buffer) -> bool:
    """RFC 5761 §4 demux: RTCP if the second byte (RTCP packet type) is 192..223.

    (RTP payload types 64..95 with the marker bit would collide; they must not be used when
    RTP and RTCP are multiplexed.)  Also requires version 2 and a full RTCP header.
    """
    return len(data) >= 4 and (data[0] & 0xC0) == 0x80 and 192 <= data[1] <= 223


def is_rtp(data: Buffer) -> bool:
    """Version 2, at least a fixed header, and not RTCP by the RFC 5761 rule."""
    return len(data) >= RTP_HEADER_SIZE and (data[0] & 0xC0) == 0x80 and not 192 <= data[1] <= 223


# ---------------------------------------------------------------------------
# Single-field accessors (no validation beyond what indexing gives)
# ---------------------------------------------------------------------------


def version(data: Buffer) -> int:
    return data[0] >> 6


def has_padding(data: Buffer) -> bool:
    return bool(data[0] & 0x20)


def has_extension(data: Buffer) -> bool:
    return bool(data[0] & 0x10)


def csrc_count(data: Buffer) -> int:
    return data[0] & 0x0F


def marker(data: Buffer) -> bool:
    return bool(data[1] & 0x80)


def payload_type(data: Buffer) -> int:
    return data[1] & 0x7F


def sequence(data: Buffer) -> int:
    return (data[2] << 8) | data[3]


def timestamp(data: Buffer) -> int:
    value: int = _U32.unpack_from(data, 4)[0]
    return value


def ssrc(data: Buffer) -> int:
    value: int = _U32.unpack_from(data, 8)[0]
    return value


def seq_newer(a: int, b: int) -> bool:
    """True if 16-bit sequence number ``a`` is newer than ``b`` (RFC 1982 style)."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


def header_length(data: Buffer) -> int:
    """Length of the header including CSRCs and the extension block.

    Raises ``ValueError`` if the packet is shorter than its header claims.
    """
    n = len(data)
    if n < RTP_HEADER_SIZE:
        raise ValueError("RTP packet shorter than 12 bytes")
    b0 = data[0]
    off = RTP_HEADER_SIZE + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if n < off + 4:
            raise ValueError("RTP extension header truncated")
        off += 4 + 4 * _U16.unpack_from(data, off + 2)[0]
    if off > n:
        raise ValueError("RTP header truncated")
    return off


def payload_offset(data: Buffer) -> int:
    """Offset of the first payload byte (same as :func:`header_length`)."""
    return header_length(data)


def extension_block(data: Buffer) -> tuple[int, int, int] | None:
    """``(profile, start, end)`` of the extension data (after its 4-byte header), or None."""
    if not data[0] & 0x10:
        return None
    off = RTP_HEADER_SIZE + 4 * (data[0] & 0x0F)
    if len(data) < off + 4:
        raise ValueError("RTP extension header truncated")
    profile, words = _EXT_HEADER.unpack_from(data, off)
    end = off + 4 + 4 * words
    if end > len(data):
        raise ValueError("RTP extension block truncated")
    return profile, off + 4, end


def iter_extensions(data: Buffer, start: int, end: int, profile: int) -> Iterator[tuple[int, int, int]]:
    """Yield ``(id, value_offset, value_length)`` for each element of an extension block.

    ``start``/``end`` delimit the extension data (as given by :func:`extension_block` or
    :class:`RtpHeader`). Unknown profiles yield nothing. Padding bytes are skipped; in the
    one-byte form id 15 terminates parsing (RFC 8285 §4.2). Malformed lengths stop iteration.
    """
    pos = start
    if profile == EXT_PROFILE_ONE_BYTE:
        while pos < end:
            b = data[pos]
            ext_id = b >> 4
            if ext_id == 0:
                pos += 1
                continue
            if ext_id == 15:
                return
            length = (b & 0x0F) + 1
            value = pos + 1
            pos = value + length
            if pos > end:
                return
            yield ext_id, value, length
    elif (profile & EXT_PROFILE_TWO_BYTE_MASK) == EXT_PROFILE_TWO_BYTE:
        while pos < end:
            ext_id = data[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 1 >= end:
                return
            length = data[pos + 1]
            value = pos + 2
            pos = value + length
            if pos > end:
                return
            yield ext_id, value, length


def find_extension(data: Buffer, ext_id: int) -> tuple[int, int] | None:
    """``(value_offset, value_length)`` of extension ``ext_id`` in an RTP packet, or None."""
    if not data[0] & 0x10:
        return None
    block = extension_block(data)
    assert block is not None
    profile, start, end = block
    return _find_in_block(data, start, end, profile, ext_id)


def _find_in_block(data: Buffer, start: int, end: int, profile: int, ext_id: int) -> tuple[int, int] | None:
    pos = start
    if profile == EXT_PROFILE_ONE_BYTE:
        while pos < end:
            b = data[pos]
            i = b >> 4
            if i == 0:
                pos += 1
                continue
            if i == 15:
                return None
            length = (b & 0x0F) + 1
            if pos + 1 + length > end:
                return None
            if i == ext_id:
                return pos + 1, length
            pos += 1 + length
    elif (profile & EXT_PROFILE_TWO_BYTE_MASK) == EXT_PROFILE_TWO_BYTE:
        while pos < end:
            i = data[pos]
            if i == 0:
                pos += 1
                continue
            if pos + 1 >= end:
                return None
            length = data[pos + 1]
            if pos + 2 + length > end:
                return None
            if i == ext_id:
                return pos + 2, length
            pos += 2 + length
    return None


def get_extension(data: Buffer, ext_id: int) -> bytes | None:
    """Value of extension ``ext_id`` as bytes, or None if absent."""
    loc = find_extension(data, ext_id)
    if loc is None:
        return None
    return bytes(data[loc[0] : loc[0] + loc[1]])


# ---------------------------------------------------------------------------
# Reusable parsed view
# ---------------------------------------------------------------------------


class RtpHeader:
    """Parsed RTP header fields and offsets; fill in place with :meth:`parse`.

    Offsets refer to the buffer passed to :meth:`parse`. ``ext_profile`` is -1 (and
    ``ext_start == ext_end``) when there is no extension block. ``payload_end`` excludes
    padding.
    """

    __slots__ = (
        "csrc_count",
        "ext_end",
        "ext_profile",
        "ext_start",
        "first_byte",
        "marker",
        "padding",
        "payload_end",
        "payload_start",
        "payload_type",
        "sequence",
        "ssrc",
        "timestamp",
    )

    def __init__(self) -> None:
        self.first_byte = 0x80
        self.csrc_count = 0
        self.padding = False
        self.marker = False
        self.payload_type = 0
        self.sequence = 0
        self.timestamp = 0
        self.ssrc = 0
        self.ext_profile = -1
        self.ext_start = RTP_HEADER_SIZE
        self.ext_end = RTP_HEADER_SIZE
        self.payload_start = RTP_HEADER_SIZE
        self.payload_end = RTP_HEADER_SIZE

    @classmethod
    def from_bytes(cls, data: Buffer) -> RtpHeader:
        hdr = cls()
        hdr.parse(data)
        return hdr

    def parse(self, data: Buffer) -> RtpHeader:
        """Fill the fields from ``data``; returns self. Raises ``ValueError`` if malformed."""
        n = len(data)
        if n < RTP_HEADER_SIZE:
            raise ValueError("RTP packet shorter than 12 bytes")
        b0, b1, self.sequence, self.timestamp, self.ssrc = FIXED_HEADER.unpack_from(data)
        if b0 & 0xC0 != 0x80:
            raise ValueError("not RTP version 2")
        self.first_byte = b0
        cc = b0 & 0x0F
        self.csrc_count = cc
        self.marker = b1 >= 0x80
        self.payload_type = b1 & 0x7F
        off = RTP_HEADER_SIZE + 4 * cc
        if b0 & 0x10:
            if n < off + 4:
                raise ValueError("RTP extension header truncated")
            profile, words = _EXT_HEADER.unpack_from(data, off)
            self.ext_profile = profile
            off += 4
            self.ext_start = off
            off += 4 * words
            self.ext_end = off
        else:
            self.ext_profile = -1
            self.ext_start = self.ext_end = off
        if off > n:
            raise ValueError("RTP header truncated")
        self.payload_start = off
        if b0 & 0x20:
            pad = data[n - 1]
            if pad == 0 or off + pad > n:
                raise ValueError("invalid RTP padding length")
            self.padding = True
            self.payload_end = n - pad
        else:
            self.padding = False
            self.payload_end = n
        return self

    @property
    def header_length(self) -> int:
        return self.payload_start

    @property
    def has_extension(self) -> bool:
        return self.ext_profile >= 0

    def extensions(self, data: Buffer) -> Iterator[tuple[int, int, int]]:
        """Iterate ``(id, value_offset, value_length)`` over this packet's extensions."""
        return iter_extensions(data, self.ext_start, self.ext_end, self.ext_profile)

    def find_extension(self, data: Buffer, ext_id: int) -> tuple[int, int] | None:
        if self.ext_profile < 0:
            return None
        return _find_in_block(data, self.ext_start, self.ext_end, self.ext_profile, ext_id)

    def get_extension(self, data: Buffer, ext_id: int) -> bytes | None:
        loc = self.find_extension(data, ext_id)
        if loc is None:
            return None
        return bytes(data[loc[0] : loc[0] + loc[1]])
