"""Payload inspection: keyframe detection (VP8, H.264, audio) and VP8 descriptor munging.

All functions take ``(buf, start, end)`` where ``buf[start:end]`` is the RTP payload without
padding (``RtpHeader.payload_start`` / ``payload_end``), so no payload slice is ever copied.
"""

from __future__ import annotations

from enum import IntEnum

from .header import Buffer

__all__ = [
    "Codec",
    "Vp8Descriptor",
    "Vp8PictureIdMunger",
    "apply_vp8_offsets",
    "codec_from_mime",
    "h264_is_keyframe",
    "is_keyframe",
    "opus_is_keyframe",
    "vp8_is_keyframe",
    "vp8_keyframe_size",
    "write_vp8_picture_id",
    "write_vp8_tl0picidx",
]


class Codec(IntEnum):
    OPUS = 1
    #: Any other audio codec (PCMU, PCMA, G722, RED): every packet decodes on its own.
    AUDIO = 2
    VP8 = 3
    H264 = 4

    @property
    def is_video(self) -> bool:
        return self >= Codec.VP8


def codec_from_mime(mime: str) -> Codec:
    """``"video/VP8"`` → :attr:`Codec.VP8` etc. Raises ``ValueError`` for unsupported video."""
    kind, _, name = mime.lower().partition("/")
    if kind == "audio":
        return Codec.OPUS if name == "opus" else Codec.AUDIO
    if kind == "video":
        if name == "vp8":
            return Codec.VP8
        if name == "h264":
            return Codec.H264
    raise ValueError(f"unsupported codec for forwarding: {mime}")


# ---------------------------------------------------------------------------
# VP8 (RFC 7741)
# ---------------------------------------------------------------------------
#
#       0 1 2 3 4 5 6 7
#      |X|R|N|S|R| PID |   required
#   X: |I|L|T|K| RSV   |   if X
#   I: |M| PictureID   |   if I; M=1 → 15-bit picture id (second byte follows)
#   L: |   TL0PICIDX   |   if L
#   T/K: |TID|Y| KEYIDX |  if T or K
#
# After the descriptor, the first partition of a frame starts with the VP8 payload header,
# whose lowest bit of the first byte is P (0 = key frame, RFC 7741 §4.3).


class Vp8Descriptor:
    """Parsed VP8 payload descriptor; reusable (fill with :meth:`parse`).

    Offsets (``*_offset``) are relative to the payload start, so they stay valid when the
    payload moves inside a rewritten packet. Absent fields are -1 (``picture_id_bits`` 0).
    """

    __slots__ = (
        "keyframe",
        "keyidx",
        "layer_sync",
        "non_reference",
        "partition_index",
        "picture_id",
        "picture_id_bits",
        "picture_id_offset",
        "size",
        "start_of_partition",
        "tid",
        "tl0picidx",
        "tl0picidx_offset",
    )

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Reset to "no descriptor" (e.g. for a padding-only packet)."""
        self.size = 0
        self.non_reference = False
        self.start_of_partition = False
        self.partition_index = 0
        self.picture_id = -1
        self.picture_id_bits = 0
        self.picture_id_offset = -1
        self.tl0picidx = -1
        self.tl0picidx_offset = -1
        self.tid = -1
        self.layer_sync = False
        self.keyidx = -1
        self.keyframe = False

    def parse(self, buf: Buffer, start: int, end: int) -> Vp8Descriptor:
        """Parse the descriptor at ``buf[start:end]``; raises ``ValueError`` if truncated."""
        if start >= end:
            raise ValueError("empty VP8 payload")
        b = buf[start]
        self.non_reference = bool(b & 0x20)
        self.start_of_partition = s = bool(b & 0x10)
        self.partition_index = pid = b & 0x07
        pos = start + 1
        self.picture_id = -1
        self.picture_id_bits = 0
        self.picture_id_offset = -1
        self.tl0picidx = -1
        self.tl0picidx_offset = -1
        self.tid = -1
        self.layer_sync = False
        self.keyidx = -1
        if b & 0x80:
            if pos >= end:
                raise ValueError("VP8 descriptor truncated (X)")
            x = buf[pos]
            pos += 1
            if x & 0x80:  # I
                if pos >= end:
                    raise ValueError("VP8 descriptor truncated (I)")
                self.picture_id_offset = pos - start
                p = buf[pos]
                if p & 0x80:
                    if pos + 1 >= end:
                        raise ValueError("VP8 descriptor truncated (M)")
                    self.picture_id = ((p & 0x7F) << 8) | buf[pos + 1]
                    self.picture_id_bits = 15
                    pos += 2
                else:
                    self.picture_id = p
                    self.picture_id_bits = 7
                    pos += 1
            if x & 0x40:  # L
                if pos >= end:
                    raise ValueError("VP8 descriptor truncated (L)")
                self.tl0picidx_offset = pos - start
                self.tl0picidx = buf[pos]
                pos += 1
            if x & 0x30:  # T or K
                if pos >= end:
                    raise ValueError("VP8 descriptor truncated (T/K)")
                tk = buf[pos]
                if x & 0x20:
                    self.tid = tk >> 6
                    self.layer_sync = bool(tk & 0x20)
                if x & 0x10:
                    self.keyidx = tk & 0x1F
                pos += 1
        self.size = pos - start
        self.keyframe = s and pid == 0 and pos < end and not buf[pos] & 0x01
        return self


def vp8_is_keyframe(buf: Buffer, start: int, end: int) -> bool:
    """True for the first packet of a VP8 key frame (S=1, PID=0, P=0). Never raises."""
    if start >= end:
        return False
    b = buf[start]
    if (b & 0x17) != 0x10:  # need S=1 and partition index 0
        return False
    pos = start + 1
    if b & 0x80:
        if pos >= end:
            return False
        x = buf[pos]
        pos += 1
        if x & 0x80:
            if pos >= end:
                return False
            pos += 2 if buf[pos] & 0x80 else 1
        if x & 0x40:
            pos += 1
        if x & 0x30:
            pos += 1
    return pos < end and not buf[pos] & 0x01


def vp8_keyframe_size(buf: Buffer, start: int, end: int) -> tuple[int, int] | None:
    """``(width, height)`` from a key frame's VP8 header (RFC 6386 §9.1).

    ``start`` is the first byte after the payload descriptor of a key frame's first packet.
    """
    if end - start < 10 or buf[start] & 0x01:
        return None
    if buf[start + 3] != 0x9D or buf[start + 4] != 0x01 or buf[start + 5] != 0x2A:
        return None
    width = (buf[start + 6] | (buf[start + 7] << 8)) & 0x3FFF
    height = (buf[start + 8] | (buf[start + 9] << 8)) & 0x3FFF
    return width, height


def write_vp8_picture_id(buf: bytearray, offset: int, bits: int, value: int) -> None:
    """Write a picture id in place, keeping the field width (7 or 15 bits) of the packet."""
    if bits == 15:
        buf[offset] = 0x80 | ((value >> 8) & 0x7F)
        buf[offset + 1] = value & 0xFF
    elif bits == 7:
        buf[offset] = value & 0x7F
    else:
        raise ValueError("packet has no picture id")


def write_vp8_tl0picidx(buf: bytearray, offset: int, value: int) -> None:
    buf[offset] = value & 0xFF


class Vp8PictureIdMunger:
    """Keeps a subscriber's VP8 picture id / TL0PICIDX continuous across source switches.

    Output values are ``(input + offset)`` modulo 2^15 (picture id) and 2^8 (TL0PICIDX).
    Feed :meth:`observe` with the newest forwarded packet's descriptor; on a switch,
    :meth:`switch` (called with the new source's first descriptor, a key frame) chooses offsets
    so that the new picture gets ``last output + 1``. Offsets are 0 until the first switch,
    i.e. the first source passes through untouched.
    """

    __slots__ = ("last_in_picture_id", "last_in_tl0picidx", "picture_id_offset", "tl0picidx_offset")

    def __init__(self) -> None:
        self.picture_id_offset = 0
        self.tl0picidx_offset = 0
        self.last_in_picture_id = -1
        self.last_in_tl0picidx = -1

    @property
    def active(self) -> bool:
        return bool(self.picture_id_offset or self.tl0picidx_offset)

    def observe(self, desc: Vp8Descriptor) -> None:
        if desc.picture_id >= 0:
            self.last_in_picture_id = desc.picture_id
        if desc.tl0picidx >= 0:
            self.last_in_tl0picidx = desc.tl0picidx

    def last_out_picture_id(self) -> int:
        if self.last_in_picture_id < 0:
            return -1
        return (self.last_in_picture_id + self.picture_id_offset) & 0x7FFF

    def last_out_tl0picidx(self) -> int:
        if self.last_in_tl0picidx < 0:
            return -1
        return (self.last_in_tl0picidx + self.tl0picidx_offset) & 0xFF

    def switch(self, desc: Vp8Descriptor) -> None:
        last_pid = self.last_out_picture_id()
        if desc.picture_id >= 0 and last_pid >= 0:
            self.picture_id_offset = (last_pid + 1 - desc.picture_id) & 0x7FFF
        last_tl0 = self.last_out_tl0picidx()
        if desc.tl0picidx >= 0 and last_tl0 >= 0:
            self.tl0picidx_offset = (last_tl0 + 1 - desc.tl0picidx) & 0xFF
        self.last_in_picture_id = desc.picture_id
        self.last_in_tl0picidx = desc.tl0picidx

    def rewrite(self, buf: bytearray, payload_start: int, desc: Vp8Descriptor) -> None:
        """Apply the current offsets to the descriptor copied at ``buf[payload_start:]``."""
        apply_vp8_offsets(buf, payload_start, desc, self.picture_id_offset, self.tl0picidx_offset)


def apply_vp8_offsets(
    buf: bytearray | memoryview, payload_start: int, desc: Vp8Descriptor, picture_id_offset: int, tl0picidx_offset: int
) -> None:
    if picture_id_offset and desc.picture_id_bits:
        value = (desc.picture_id + picture_id_offset) & 0x7FFF
        off = payload_start + desc.picture_id_offset
        if desc.picture_id_bits == 15:
            buf[off] = 0x80 | (value >> 8)
            buf[off + 1] = value & 0xFF
        else:
            buf[off] = value & 0x7F
    if tl0picidx_offset and desc.tl0picidx_offset >= 0:
        buf[payload_start + desc.tl0picidx_offset] = (desc.tl0picidx + tl0picidx_offset) & 0xFF


# ---------------------------------------------------------------------------
# H.264 (RFC 6184)
# ---------------------------------------------------------------------------

_NAL_IDR = 5
_NAL_SPS = 7
_STAP_A = 24
_FU_A = 28


def h264_is_keyframe(buf: Buffer, start: int, end: int) -> bool:
    """True if the payload starts an IDR picture or carries an SPS (key frame start).

    Handles single NAL unit packets, STAP-A aggregates and the first fragment of FU-A.
    """
    if start >= end:
        return False
    nal = buf[start] & 0x1F
    if nal == _STAP_A:
        pos = start + 1
        while pos + 2 < end:
            size = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
            if size == 0 or pos + size > end:
                return False
            t = buf[pos] & 0x1F
            if t == _NAL_IDR or t == _NAL_SPS:
                return True
            pos += size
        return False
    if nal == _FU_A:
        if start + 1 >= end:
            return False
        fu = buf[start + 1]
        t = fu & 0x1F
        return bool(fu & 0x80) and (t == _NAL_IDR or t == _NAL_SPS)
    return nal == _NAL_IDR or nal == _NAL_SPS


# ---------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------


def opus_is_keyframe(buf: Buffer, start: int, end: int) -> bool:
    """Every Opus packet decodes on its own; a subscriber may start on any of them."""
    return True


def is_keyframe(codec: Codec, buf: Buffer, start: int, end: int) -> bool:
    if codec == Codec.VP8:
        return vp8_is_keyframe(buf, start, end)
    if codec == Codec.H264:
        return h264_is_keyframe(buf, start, end)
    return True
