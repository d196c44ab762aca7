from __future__ import annotations

import struct

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from services.media.rtp.extensions import (
    URI_ABS_SEND_TIME,
    URI_AUDIO_LEVEL,
    URI_MID,
    URI_REPAIRED_RID,
    URI_RID,
    URI_TWCC,
    ExtensionIds,
    ExtensionRewriter,
    build_extension_block,
    parse_audio_level,
    parse_sdes_string,
    read_audio_level,
    read_mid,
    read_rid,
)
from services.media.rtp.header import RtpHeader, iter_extensions

PAYLOAD = b"\x90\x80\x12\x34" + bytes(range(40))

# libwebrtc-like publisher ids, aiortc-like subscriber ids
PUB = {URI_MID: 4, URI_RID: 10, URI_REPAIRED_RID: 11, URI_ABS_SEND_TIME: 2, URI_TWCC: 3}
SUB = {URI_MID: 1, URI_ABS_SEND_TIME: 3, URI_TWCC: 5}


def packet(elements: list[tuple[int, bytes]], payload: bytes = PAYLOAD, *, padding: int = 0) -> bytes:
    b0 = 0x80 | (0x10 if elements else 0) | (0x20 if padding else 0)
    head = struct.pack("!BBHII", b0, 0x80 | 96, 1000, 90000, 0x11223344)
    tail = payload + (bytes(padding - 1) + bytes([padding]) if padding else b"")
    if not elements:
        return head + tail
    return head + build_extension_block(elements) + tail


def elements_of(data: bytes) -> list[tuple[int, bytes]]:
    hdr = RtpHeader().parse(data)
    return [(i, data[o : o + n]) for i, o, n in hdr.extensions(data)]


def aiortc_view(data: bytes, ids: dict[str, int]) -> RtpPacket:
    params = RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for u, i in ids.items()])
    m = HeaderExtensionsMap()
    m.configure(params)
    return RtpPacket.parse(data, m)


def publisher_packet(mid: bytes = b"0", rid: bytes = b"h") -> bytes:
    return packet([(4, mid), (10, rid), (2, b"\x01\x02\x03"), (3, b"\x00\x2a")])


def test_build_extension_block_exact_bytes() -> None:
    assert build_extension_block([(1, b"a"), (2, b"\x01\x02")]) == bytes.fromhex("bede0002 1061210102000000")
    # id > 14 forces the two-byte form
    assert build_extension_block([(15, b"\x07")]) == bytes.fromhex("10000001 0f010700")
    assert build_extension_block([(3, b"")]) == bytes.fromhex("10000001 03000000")


def test_audio_level_parse() -> None:
    assert parse_audio_level(b"\x85") == (True, 5)
    assert parse_audio_level(b"\x7f") == (False, 127)
    with pytest.raises(ValueError):
        parse_audio_level(b"")
    data = packet([(1, b"\x9e")])
    hdr = RtpHeader().parse(data)
    assert read_audio_level(data, hdr, 1) == 0x9E
    assert read_audio_level(data, hdr, 2) == -1
    assert read_audio_level(data, hdr, 0) == -1
    plain = packet([])
    assert read_audio_level(plain, RtpHeader().parse(plain), 1) == -1


def test_rid_and_mid_values() -> None:
    data = publisher_packet(mid=b"video0", rid=b"f")
    hdr = RtpHeader().parse(data)
    assert read_rid(data, hdr, 10) == "f"
    assert read_mid(data, hdr, 4) == "video0"
    assert read_rid(data, hdr, 11) is None
    assert parse_sdes_string(memoryview(b"q")) == "q"
    ids = ExtensionIds(PUB)
    assert (ids.mid, ids.rid, ids.repaired_rid, ids.twcc, ids.abs_send_time, ids.audio_level) == (4, 10, 11, 3, 2, 0)
    # agrees with aiortc's own parser
    ref = aiortc_view(data, PUB)
    assert ref.extensions.rtp_stream_id == "f"
    assert ref.extensions.mid == "video0"


def test_in_place_rewrite_same_mid_length() -> None:
    data = publisher_packet(mid=b"0")
    rw = ExtensionRewriter(PUB, SUB, mid="7")
    assert not rw.passthrough
    hdr = RtpHeader().parse(data)
    out = rw.rewrite(data, hdr)
    assert len(out) == len(data)  # in place
    assert bytes(out[:12]) == data[:12]
    # MID → id 1 value "7"; RID blanked to padding; abs-send-time → 3; twcc → 5
    block = bytes(out[12 : hdr.payload_start])
    assert block == bytes.fromhex("bede0003 1037 0000 32010203 51002a 00")
    assert elements_of(bytes(out)) == [(1, b"7"), (3, b"\x01\x02\x03"), (5, b"\x00\x2a")]
    assert bytes(out[hdr.payload_start :]) == PAYLOAD
    ref = aiortc_view(bytes(out), SUB)
    assert ref.extensions.mid == "7"
    assert ref.extensions.abs_send_time == 0x010203
    assert ref.extensions.transport_sequence_number == 42
    assert ref.extensions.rtp_stream_id is None


def test_rebuild_when_mid_length_differs() -> None:
    data = publisher_packet(mid=b"0")
    rw = ExtensionRewriter(PUB, SUB, mid=b"12")
    out = bytes(rw.rewrite(data, RtpHeader().parse(data)))
    assert elements_of(out) == [(1, b"12"), (3, b"\x01\x02\x03"), (5, b"\x00\x2a")]
    assert out[12:28] == bytes.fromhex("bede0003 113132 32010203 51002a 0000")
    assert out[28:] == PAYLOAD
    assert out[0] == 0x90 and out[1:12] == data[1:12]


def test_dropped_extensions_and_rid_never_forwarded() -> None:
    # subscriber negotiated RID under the same id: still must not be forwarded
    sub = dict(PUB)
    rw = ExtensionRewriter(PUB, sub)
    data = publisher_packet(mid=b"0")
    out = bytes(rw.rewrite(data, RtpHeader().parse(data)))
    got = dict(elements_of(out))
    assert 10 not in got and 11 not in got
    assert got == {4: b"0", 2: b"\x01\x02\x03", 3: b"\x00\x2a"}
    assert not rw.passthrough


def test_passthrough_identity() -> None:
    ids = {URI_MID: 1, URI_AUDIO_LEVEL: 2}
    rw = ExtensionRewriter(ids, dict(ids))
    assert rw.passthrough
    data = packet([(1, b"0"), (2, b"\x80")])
    assert bytes(rw.rewrite(data, RtpHeader().parse(data))) == data
    # a MID value to write disables the fast path
    assert not ExtensionRewriter(ids, dict(ids), mid="0").passthrough
    # MID not negotiated by the subscriber: mid value ignored, MID dropped
    rw2 = ExtensionRewriter(ids, {URI_AUDIO_LEVEL: 2}, mid="0")
    assert not rw2.passthrough
    out = bytes(rw2.rewrite(data, RtpHeader().parse(data)))
    assert elements_of(out) == [(2, b"\x80")]


def test_add_mid_to_packet_without_extensions() -> None:
    rw = ExtensionRewriter({URI_AUDIO_LEVEL: 1}, {URI_MID: 3, URI_AUDIO_LEVEL: 1}, mid="a1", add_mid=True)
    plain = packet([], padding=3)
    out = bytes(rw.rewrite(plain, RtpHeader().parse(plain)))
    assert out[0] == 0x80 | 0x10 | 0x20
    assert out[12:20] == bytes.fromhex("bede0001 31613100")
    assert out[20:] == plain[12:]  # payload and padding kept
    hdr = RtpHeader().parse(out)
    assert out[hdr.payload_start : hdr.payload_end] == PAYLOAD
    # packet with audio level only: MID inserted first
    with_level = packet([(1, b"\x85")])
    out2 = bytes(rw.rewrite(with_level, RtpHeader().parse(with_level)))
    assert elements_of(out2) == [(3, b"a1"), (1, b"\x85")]


def test_subscriber_id_above_14_switches_to_two_byte() -> None:
    rw = ExtensionRewriter({URI_TWCC: 3}, {URI_TWCC: 200})
    data = packet([(3, b"\x00\x07")])
    out = bytes(rw.rewrite(data, RtpHeader().parse(data)))
    assert out[12:20] == bytes.fromhex("10000001 c8020007")
    assert elements_of(out) == [(200, b"\x00\x07")]


def test_two_byte_input_in_place() -> None:
    rw = ExtensionRewriter(PUB, SUB, mid="9")
    head = struct.pack("!BBHII", 0x90, 96, 1, 2, 3)
    body = bytes([4, 1]) + b"0" + bytes([10, 1]) + b"q" + bytes([3, 2, 0, 9]) + bytes(2)
    data = head + struct.pack("!HH", 0x1000, len(body) // 4) + body + PAYLOAD
    out = bytes(rw.rewrite(data, RtpHeader().parse(data)))
    assert len(out) == len(data)
    assert out[16:28] == bytes([1, 1]) + b"9" + bytes(3) + bytes([5, 2, 0, 9]) + bytes(2)
    assert elements_of(out) == [(1, b"9"), (5, b"\x00\x09")]


def test_everything_dropped_clears_x_bit_on_rebuild() -> None:
    rw = ExtensionRewriter({URI_RID: 10, URI_MID: 4}, {URI_MID: 1}, mid="long-mid")
    data = packet([(10, b"q")])
    # in place: only blanking (X bit kept, block of padding)
    out = bytes(rw.rewrite(data, RtpHeader().parse(data)))
    assert elements_of(out) == []
    assert out[RtpHeader().parse(out).payload_start :] == PAYLOAD
    # MID length differs → rebuild → only the new MID remains
    data2 = packet([(10, b"q"), (4, b"0")])
    out2 = bytes(rw.rewrite(data2, RtpHeader().parse(data2)))
    assert elements_of(out2) == [(1, b"long-mid")]
    rw_none = ExtensionRewriter({URI_RID: 10, URI_MID: 4}, {}, mid=None)
    data3 = packet([(4, b"0")])
    # unknown-profile block gets rebuilt; nothing survives → no X bit
    odd = bytearray(data3)
    odd[12:14] = b"\x12\x34"
    out3 = bytes(rw_none.rewrite(bytes(odd), RtpHeader().parse(bytes(odd))))
    assert out3[0] & 0x10 == 0
    assert out3[12:] == PAYLOAD


def test_terminator_blanks_rest_of_block() -> None:
    rw = ExtensionRewriter({URI_TWCC: 3, URI_RID: 10}, {URI_TWCC: 5})
    head = struct.pack("!BBHII", 0x90, 96, 1, 2, 3)
    body = bytes([0x31, 0, 1, 0xF0, 0xA0, ord("q"), 0, 0])
    data = head + struct.pack("!HH", 0xBEDE, 2) + body + PAYLOAD
    out = bytes(rw.rewrite(data, RtpHeader().parse(data)))
    assert out[16:24] == bytes([0x51, 0, 1, 0, 0, 0, 0, 0])


def test_invalid_id_maps_rejected() -> None:
    with pytest.raises(ValueError):
        ExtensionRewriter({URI_MID: 0}, {})
    with pytest.raises(ValueError):
        ExtensionRewriter({URI_MID: 1, URI_RID: 1}, {})


def test_iter_extensions_on_rewritten_output_matches_translate_elements() -> None:
    rw = ExtensionRewriter(PUB, SUB, mid="5")
    data = publisher_packet(mid=b"0")
    hdr = RtpHeader().parse(data)
    out = bytes(rw.rewrite(data, hdr))
    oh = RtpHeader().parse(out)
    got = [(i, out[o : o + n]) for i, o, n in iter_extensions(out, oh.ext_start, oh.ext_end, oh.ext_profile)]
    assert got == rw.translate_elements(data, hdr)


def test_same_shape_reuses_plan_but_copies_fresh_values() -> None:
    rw = ExtensionRewriter(PUB, SUB, mid="7")
    outs = []
    for i in range(5):
        data = packet([(4, b"0"), (10, b"h"), (2, bytes([i, i, i])), (3, bytes([0, i]))])
        outs.append(elements_of(bytes(rw.rewrite(data, RtpHeader().parse(data)))))
    assert outs == [[(1, b"7"), (3, bytes([i, i, i])), (5, bytes([0, i]))] for i in range(5)]
    assert len(rw._plans) == 1


def test_shapes_with_same_length_and_first_byte_are_told_apart() -> None:
    rw = ExtensionRewriter(PUB, SUB, mid="7")
    a = packet([(4, b"0"), (2, b"abc"), (3, b"xy")])
    b = packet([(4, b"0"), (2, b"ab"), (3, b"xyz")])
    c = packet([(4, b"0"), (3, b"xy"), (2, b"abc")])
    assert len(a) == len(b) == len(c)
    for _ in range(2):
        for data, want in (
            (a, [(1, b"7"), (3, b"abc"), (5, b"xy")]),
            (b, [(1, b"7"), (3, b"ab"), (5, b"xyz")]),
            (c, [(1, b"7"), (5, b"xy"), (3, b"abc")]),
        ):
            out = bytes(rw.rewrite(data, RtpHeader().parse(data)))
            assert elements_of(out) == want
            assert out[-len(PAYLOAD) :] == PAYLOAD


def test_rebuild_plan_reused_with_fresh_values_and_padding_kept() -> None:
    rw = ExtensionRewriter(PUB, SUB, mid="video12")
    for i in range(3):
        data = packet([(4, b"0"), (10, b"q"), (3, bytes([9, i]))], padding=5)
        out = bytes(rw.rewrite(data, RtpHeader().parse(data)))
        hdr = RtpHeader().parse(out)
        assert elements_of(out) == [(1, b"video12"), (5, bytes([9, i]))]
        assert out[hdr.payload_start : hdr.payload_end] == PAYLOAD
        assert out[-5:] == bytes(4) + b"\x05"
        assert out[0] == 0xB0 and out[1:12] == data[1:12]
    assert len(rw._plans) == 1


def test_many_shapes_bounded_plan_cache() -> None:
    rw = ExtensionRewriter({URI_TWCC: 3}, {URI_TWCC: 5})
    for n in range(1, 40):
        data = packet([(3, bytes([n]) * (1 + n % 16)), (7, bytes(n % 5 + 1))])
        out = bytes(rw.rewrite(data, RtpHeader().parse(data)))
        assert elements_of(out) == [(5, bytes([n]) * (1 + n % 16))]
        assert len(rw._plans) <= 16


def test_csrcs_survive_rewrite_and_rebuild() -> None:
    head = struct.pack("!BBHII", 0x92, 96, 1, 2, 3) + struct.pack("!II", 0xAAAA, 0xBBBB)
    block = build_extension_block([(4, b"0"), (3, b"\x00\x01")])
    data = head + block + PAYLOAD
    for mid in ("7", "long"):
        rw = ExtensionRewriter(PUB, SUB, mid=mid)
        out = bytes(rw.rewrite(data, RtpHeader().parse(data)))
        assert out[:20] == head
        assert elements_of(out) == [(1, mid.encode()), (5, b"\x00\x01")]
        assert out.endswith(PAYLOAD)


def test_empty_extension_block() -> None:
    data = struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + struct.pack("!HH", 0xBEDE, 0)  # no payload at all
    hdr = RtpHeader().parse(data)
    assert bytes(ExtensionRewriter(PUB, SUB, mid="7").rewrite(data, hdr)) == data
    out = bytes(ExtensionRewriter(PUB, SUB, mid="7", add_mid=True).rewrite(data, hdr))
    assert elements_of(out) == [(1, b"7")]
