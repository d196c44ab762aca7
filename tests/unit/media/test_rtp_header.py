from __future__ import annotations

import random
import struct

import pytest
from aiortc.rtp import RtpPacket

from services.media.rtp import header as h
from services.media.rtp.header import RtpHeader


def rtp(
    seq: int = 1,
    ts: int = 2,
    ssrc: int = 3,
    payload: bytes = b"",
    *,
    pt: int = 96,
    marker: bool = False,
    csrcs: tuple[int, ...] = (),
    ext: tuple[int, bytes] | None = None,
    padding: int = 0,
) -> bytes:
    b0 = 0x80 | len(csrcs) | (0x10 if ext else 0) | (0x20 if padding else 0)
    out = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq, ts, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if ext:
        profile, body = ext
        assert len(body) % 4 == 0
        out += struct.pack("!HH", profile, len(body) // 4) + body
    out += payload
    if padding:
        out += bytes(padding - 1) + bytes([padding])
    return out


def test_fixed_fields_exact_bytes() -> None:
    data = bytes.fromhex("80e01234deadbeefcafebabe") + b"xyz"
    assert h.version(data) == 2
    assert h.marker(data) is True
    assert h.payload_type(data) == 0x60
    assert h.sequence(data) == 0x1234
    assert h.timestamp(data) == 0xDEADBEEF
    assert h.ssrc(data) == 0xCAFEBABE
    assert not h.has_padding(data) and not h.has_extension(data) and h.csrc_count(data) == 0
    assert h.header_length(data) == 12 == h.payload_offset(data)
    hdr = RtpHeader.from_bytes(data)
    assert (hdr.marker, hdr.payload_type, hdr.sequence, hdr.timestamp, hdr.ssrc) == (
        True,
        96,
        0x1234,
        0xDEADBEEF,
        0xCAFEBABE,
    )
    assert (hdr.payload_start, hdr.payload_end, hdr.ext_profile) == (12, 15, -1)


def test_csrc_extension_and_padding_offsets() -> None:
    body = bytes([0x10, 0xAA, 0x22, 1, 2, 3, 0, 0])  # id1 len1, id2 len3, two padding bytes
    data = rtp(csrcs=(7, 8), ext=(0xBEDE, body), payload=b"PAYLOAD", padding=4)
    assert h.csrc_count(data) == 2
    assert h.header_length(data) == 12 + 8 + 4 + 8
    hdr = RtpHeader().parse(data)
    assert hdr.csrc_count == 2
    assert hdr.ext_profile == 0xBEDE
    assert (hdr.ext_start, hdr.ext_end) == (24, 32)
    assert data[hdr.payload_start : hdr.payload_end] == b"PAYLOAD"
    assert hdr.padding is True
    assert h.extension_block(data) == (0xBEDE, 24, 32)
    assert list(hdr.extensions(data)) == [(1, 25, 1), (2, 27, 3)]
    assert hdr.get_extension(data, 2) == b"\x01\x02\x03"
    assert h.get_extension(data, 1) == b"\xaa"
    assert h.find_extension(data, 2) == (27, 3)
    assert h.find_extension(data, 3) is None


def test_one_byte_padding_between_elements_and_terminator() -> None:
    body = bytes([0, 0, 0x30, 0x55, 0, 0xF0, 0x40, 0x66])  # pad pad id3 pad id15(stop) id4
    data = rtp(ext=(0xBEDE, body))
    assert list(h.iter_extensions(data, 16, 24, 0xBEDE)) == [(3, 19, 1)]
    assert h.get_extension(data, 3) == b"\x55"
    assert h.get_extension(data, 4) is None  # after the terminator


def test_two_byte_extensions() -> None:
    body = bytes([5, 0, 0, 17, 3, 9, 8, 7, 0, 0]) + bytes(2)  # id5 empty, pad, id17 len3
    data = rtp(ext=(0x1000, body), payload=b"p")
    hdr = RtpHeader().parse(data)
    assert list(hdr.extensions(data)) == [(5, 18, 0), (17, 21, 3)]
    assert hdr.get_extension(data, 17) == b"\x09\x08\x07"
    assert hdr.get_extension(data, 5) == b""
    # appbits in the low nibble still mean two-byte form
    data2 = rtp(ext=(0x100F, body))
    assert h.get_extension(data2, 17) == b"\x09\x08\x07"
    # unknown profile: no elements
    data3 = rtp(ext=(0x1234, body))
    assert h.get_extension(data3, 17) is None


def test_truncated_lengths_are_rejected() -> None:
    with pytest.raises(ValueError):
        RtpHeader().parse(b"\x80\x60\x00")
    with pytest.raises(ValueError):
        h.header_length(rtp(csrcs=(1, 2))[:18])
    ext_pkt = rtp(ext=(0xBEDE, bytes(8)))
    with pytest.raises(ValueError):
        RtpHeader().parse(ext_pkt[:-4])
    with pytest.raises(ValueError):
        RtpHeader().parse(ext_pkt[:14])
    with pytest.raises(ValueError):  # padding count larger than payload
        RtpHeader().parse(b"\xa0" + rtp(payload=b"\x05")[1:])
    with pytest.raises(ValueError):  # padding count of zero
        RtpHeader().parse(b"\xa0" + rtp(payload=b"\x00")[1:])
    with pytest.raises(ValueError):  # version 1
        RtpHeader().parse(b"\x40" + rtp()[1:])
    # element claiming more bytes than the block: iteration stops, no exception
    bad = rtp(ext=(0xBEDE, bytes([0x1F, 1, 2, 3])))
    assert list(RtpHeader().parse(bad).extensions(bad)) == []


def test_is_rtcp_demux() -> None:
    for pt in (192, 200, 201, 205, 206, 223):
        assert h.is_rtcp(bytes([0x80, pt, 0, 1, 0, 0, 0, 0]))
    for second in (96, 96 | 0x80, 111, 191, 224, 0):
        assert not h.is_rtcp(bytes([0x80, second, 0, 1]) + bytes(8))
        assert h.is_rtp(bytes([0x80, second, 0, 1]) + bytes(8))
    assert not h.is_rtcp(b"\x80\xc8")  # too short
    assert not h.is_rtcp(bytes([0x16, 200, 0, 1]))  # DTLS-ish first byte
    assert not h.is_rtp(bytes([0x80, 200]) + bytes(10))


def test_seq_newer_wraparound() -> None:
    assert h.seq_newer(1, 0)
    assert h.seq_newer(0, 65535)
    assert not h.seq_newer(65535, 0)
    assert not h.seq_newer(5, 5)
    assert h.seq_newer(0x7FFF, 0)
    assert not h.seq_newer(0x8000, 0)


def test_reused_header_resets_optional_fields() -> None:
    hdr = RtpHeader()
    hdr.parse(rtp(ext=(0xBEDE, bytes([0x10, 1, 0, 0])), padding=2, payload=b"x"))
    assert hdr.ext_profile == 0xBEDE and hdr.padding
    hdr.parse(rtp(payload=b"abc"))
    assert hdr.ext_profile == -1 and not hdr.padding
    assert (hdr.ext_start, hdr.ext_end, hdr.payload_start, hdr.payload_end) == (12, 12, 12, 15)


def test_agrees_with_aiortc_parser() -> None:
    rnd = random.Random(5)
    hdr = RtpHeader()
    for _ in range(200):
        n_ext = rnd.randrange(0, 3)
        body = b""
        for i in range(n_ext):
            length = rnd.randrange(1, 5)
            body += bytes([((i + 1) << 4) | (length - 1)]) + rnd.randbytes(length)
        body += bytes(-len(body) % 4)
        data = rtp(
            rnd.randrange(65536),
            rnd.randrange(2**32),
            rnd.randrange(2**32),
            rnd.randbytes(rnd.randrange(0, 40)),
            pt=rnd.randrange(128),
            marker=rnd.random() < 0.5,
            csrcs=tuple(rnd.randrange(2**32) for _ in range(rnd.randrange(3))),
            ext=(0xBEDE, body) if body else None,
            padding=rnd.choice((0, 0, 1, 4)),
        )
        ref = RtpPacket.parse(data)
        hdr.parse(data)
        assert hdr.sequence == ref.sequence_number
        assert hdr.timestamp == ref.timestamp
        assert hdr.ssrc == ref.ssrc
        assert hdr.payload_type == ref.payload_type
        assert hdr.marker == bool(ref.marker)
        assert data[hdr.payload_start : hdr.payload_end] == ref.payload
