from __future__ import annotations

import itertools
import struct

import pytest

from services.media.rtp.codecs import (
    Codec,
    Vp8Descriptor,
    Vp8PictureIdMunger,
    codec_from_mime,
    h264_is_keyframe,
    is_keyframe,
    opus_is_keyframe,
    vp8_is_keyframe,
    vp8_keyframe_size,
    write_vp8_picture_id,
    write_vp8_tl0picidx,
)


def vp8_descriptor(
    *,
    start: bool = True,
    part: int = 0,
    non_ref: bool = False,
    picture_id: int | None = None,
    long_pid: bool = True,
    tl0: int | None = None,
    tid: int | None = None,
    sync: bool = False,
    keyidx: int | None = None,
) -> bytes:
    """RFC 7741 §4.2 payload descriptor, built bit by bit."""
    ext = picture_id is not None or tl0 is not None or tid is not None or keyidx is not None
    b0 = (0x80 if ext else 0) | (0x20 if non_ref else 0) | (0x10 if start else 0) | part
    out = bytearray([b0])
    if ext:
        x = (
            (0x80 if picture_id is not None else 0)
            | (0x40 if tl0 is not None else 0)
            | (0x20 if tid is not None else 0)
            | (0x10 if keyidx is not None else 0)
        )
        out.append(x)
        if picture_id is not None:
            if long_pid:
                out += bytes([0x80 | (picture_id >> 8), picture_id & 0xFF])
            else:
                out.append(picture_id & 0x7F)
        if tl0 is not None:
            out.append(tl0)
        if tid is not None or keyidx is not None:
            out.append(((tid or 0) << 6) | (0x20 if sync else 0) | (keyidx or 0))
    return bytes(out)


def vp8_frame_header(key: bool, width: int = 640, height: int = 360) -> bytes:
    """First bytes of a VP8 frame (RFC 6386 §9.1): 3-byte tag, then for key frames start
    code and dimensions."""
    first_part_size = 1234
    tag = (0 if key else 1) | (0 << 1) | (1 << 4) | (first_part_size << 5)
    out = struct.pack("<I", tag)[:3]
    if key:
        out += b"\x9d\x01\x2a" + struct.pack("<HH", width, height)
    return out + b"\x00" * 8


def test_vp8_descriptor_fields_15_bit() -> None:
    desc = vp8_descriptor(picture_id=0x1234, tl0=0x56, tid=2, sync=True, keyidx=5)
    assert desc == bytes([0x90, 0xF0, 0x92, 0x34, 0x56, 0xA5])
    payload = b"\x00" * 7 + desc + vp8_frame_header(True)
    d = Vp8Descriptor().parse(payload, 7, len(payload))
    assert d.size == 6
    assert d.start_of_partition and d.partition_index == 0 and not d.non_reference
    assert (d.picture_id, d.picture_id_bits, d.picture_id_offset) == (0x1234, 15, 2)
    assert (d.tl0picidx, d.tl0picidx_offset) == (0x56, 4)
    assert (d.tid, d.layer_sync, d.keyidx) == (2, True, 5)
    assert d.keyframe


def test_vp8_descriptor_7_bit_and_minimal() -> None:
    desc = vp8_descriptor(picture_id=0x55, long_pid=False, non_ref=True, start=False, part=3)
    assert desc == bytes([0xA3, 0x80, 0x55])
    d = Vp8Descriptor().parse(desc + b"\x01", 0, 4)
    assert (d.picture_id, d.picture_id_bits, d.size) == (0x55, 7, 3)
    assert d.non_reference and not d.start_of_partition and d.partition_index == 3
    assert (d.tl0picidx, d.tid, d.keyidx) == (-1, -1, -1)
    assert not d.keyframe
    plain = Vp8Descriptor().parse(b"\x10\x00", 0, 2)
    assert plain.size == 1 and plain.picture_id == -1 and plain.keyframe


@pytest.mark.parametrize(
    ("kwargs", "key", "expected"),
    [
        ({"start": True, "part": 0}, True, True),
        ({"start": True, "part": 0}, False, False),  # P bit set: inter frame
        ({"start": False, "part": 0}, True, False),  # continuation packet
        ({"start": True, "part": 1}, True, False),  # second partition
        ({"start": True, "picture_id": 300, "tl0": 1, "tid": 0}, True, True),
        ({"start": True, "picture_id": 3, "long_pid": False}, True, True),
        ({"start": True, "picture_id": 3, "tid": 1, "keyidx": 2}, False, False),
    ],
)
def test_vp8_keyframe_detection(kwargs: dict, key: bool, expected: bool) -> None:
    payload = vp8_descriptor(**kwargs) + vp8_frame_header(key)
    assert vp8_is_keyframe(payload, 0, len(payload)) is expected
    assert Vp8Descriptor().parse(payload, 0, len(payload)).keyframe is expected
    assert is_keyframe(Codec.VP8, payload, 0, len(payload)) is expected


def test_vp8_fast_check_agrees_with_full_parse() -> None:
    for start, part, pid, tl0, t, key in itertools.product(
        (True, False), (0, 1), (None, 5, 0x7F0), (None, 9), (None, 1), (True, False)
    ):
        payload = vp8_descriptor(start=start, part=part, picture_id=pid, tl0=tl0, tid=t) + vp8_frame_header(key)
        assert vp8_is_keyframe(payload, 0, len(payload)) == Vp8Descriptor().parse(payload, 0, len(payload)).keyframe


def test_vp8_truncated() -> None:
    full = vp8_descriptor(picture_id=0x1234, tl0=1, tid=1)
    for cut in range(0, len(full)):
        with pytest.raises(ValueError):
            Vp8Descriptor().parse(full[:cut], 0, cut)
        assert vp8_is_keyframe(full[:cut], 0, cut) is False
    # descriptor only, no payload header byte: not a keyframe, but parses
    d = Vp8Descriptor().parse(full, 0, len(full))
    assert not d.keyframe and d.size == len(full)


def test_vp8_keyframe_size() -> None:
    hdr = vp8_frame_header(True, 1280, 720)
    assert vp8_keyframe_size(hdr, 0, len(hdr)) == (1280, 720)
    assert vp8_keyframe_size(vp8_frame_header(False), 0, 11) is None
    bad = bytearray(hdr)
    bad[3] = 0
    assert vp8_keyframe_size(bad, 0, len(bad)) is None


def test_write_helpers_exact_bytes() -> None:
    buf = bytearray(vp8_descriptor(picture_id=0x1234, tl0=7))
    write_vp8_picture_id(buf, 2, 15, 0x7ABC)
    write_vp8_tl0picidx(buf, 4, 0x1FF)
    assert bytes(buf) == bytes([0x90, 0xC0, 0xFA, 0xBC, 0xFF])
    short = bytearray(vp8_descriptor(picture_id=5, long_pid=False))
    write_vp8_picture_id(short, 2, 7, 0x181)
    assert bytes(short) == bytes([0x90, 0x80, 0x01])
    with pytest.raises(ValueError):
        write_vp8_picture_id(short, 2, 0, 1)


def test_picture_id_munger_continuity_across_switch() -> None:
    m = Vp8PictureIdMunger()
    d = Vp8Descriptor()
    # source A frames 32760..32767 then wrap to 0, 1 (15-bit), tl0 250..255
    for pid, tl0 in ((32766, 254), (32767, 255), (0, 0)):
        payload = bytearray(vp8_descriptor(picture_id=pid, tl0=tl0) + vp8_frame_header(False))
        m.observe(d.parse(payload, 0, len(payload)))
        m.rewrite(payload, 0, d)
        assert d.picture_id == pid  # offsets 0 before the first switch
        assert bytes(payload[2:5]) == bytes([0x80 | (pid >> 8), pid & 0xFF, tl0])
    assert m.last_out_picture_id() == 0 and m.last_out_tl0picidx() == 0
    # switch to source B whose ids are far away
    key = bytearray(vp8_descriptor(picture_id=9000, tl0=77) + vp8_frame_header(True))
    d.parse(key, 0, len(key))
    m.switch(d)
    assert m.active
    m.rewrite(key, 0, d)
    out = Vp8Descriptor().parse(key, 0, len(key))
    assert (out.picture_id, out.tl0picidx) == (1, 1)
    nxt = bytearray(vp8_descriptor(picture_id=9001, tl0=78) + vp8_frame_header(False))
    d.parse(nxt, 0, len(nxt))
    m.observe(d)
    m.rewrite(nxt, 0, d)
    out = Vp8Descriptor().parse(nxt, 0, len(nxt))
    assert (out.picture_id, out.tl0picidx) == (2, 2)
    # 7-bit field keeps its width and wraps mod 128
    m2 = Vp8PictureIdMunger()
    m2.last_in_picture_id = 126
    seven = bytearray(vp8_descriptor(picture_id=40, long_pid=False) + vp8_frame_header(True))
    d.parse(seven, 0, len(seven))
    m2.switch(d)
    m2.rewrite(seven, 0, d)
    assert seven[2] == 127 and len(seven) == 21  # width unchanged
    seven2 = bytearray(vp8_descriptor(picture_id=41, long_pid=False) + vp8_frame_header(False))
    m2.rewrite(seven2, 0, d.parse(seven2, 0, len(seven2)))
    assert seven2[2] == 0


# --------------------------------------------------------------------------- H.264


def nal(t: int, nri: int = 3, body: bytes = b"\x88\x84") -> bytes:
    return bytes([(nri << 5) | t]) + body


def stap_a(*nals: bytes) -> bytes:
    return b"\x78" + b"".join(struct.pack("!H", len(n)) + n for n in nals)


def fu_a(t: int, *, start: bool, end: bool = False) -> bytes:
    return bytes([0x7C, (0x80 if start else 0) | (0x40 if end else 0) | t]) + b"\x01\x02"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (nal(5), True),  # IDR slice
        (nal(7), True),  # SPS
        (nal(8), False),  # PPS alone
        (nal(1), False),  # non-IDR slice
        (nal(6), False),  # SEI
        (stap_a(nal(7), nal(8), nal(5)), True),
        (stap_a(nal(8), nal(5)), True),
        (stap_a(nal(6), nal(1)), False),
        (stap_a(nal(1))[:-1] + b"", False),  # truncated aggregate
        (fu_a(5, start=True), True),
        (fu_a(5, start=False), False),
        (fu_a(5, start=False, end=True), False),
        (fu_a(1, start=True), False),
        (fu_a(7, start=True), True),
        (b"\x7c", False),
        (b"", False),
    ],
)
def test_h264_keyframe(payload: bytes, expected: bool) -> None:
    buf = b"HDR" + payload + b"\x00\x00"  # offsets inside a larger buffer; trailing padding
    assert h264_is_keyframe(buf, 3, 3 + len(payload)) is expected
    assert is_keyframe(Codec.H264, buf, 3, 3 + len(payload)) is expected


def test_audio_always_key_and_mime() -> None:
    assert opus_is_keyframe(b"\x01", 0, 1)
    assert is_keyframe(Codec.OPUS, b"", 0, 0)
    assert is_keyframe(Codec.AUDIO, b"\xff", 0, 1)
    assert codec_from_mime("audio/opus") is Codec.OPUS
    assert codec_from_mime("audio/red") is Codec.AUDIO
    assert codec_from_mime("video/VP8") is Codec.VP8
    assert codec_from_mime("video/H264") is Codec.H264
    assert Codec.VP8.is_video and not Codec.OPUS.is_video
    with pytest.raises(ValueError):
        codec_from_mime("video/AV1")
