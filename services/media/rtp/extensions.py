"""RTP header-extension values (audio level, RID, MID) and per-subscriber rewriting.

An SFU forwards a publisher's packets to subscribers whose PeerConnections negotiated their
own ``a=extmap`` ids (and their own MID values). :class:`ExtensionRewriter` translates the
publisher's extension block into the subscriber's id space:

* ids are remapped by URI; extensions the subscriber did not negotiate are removed;
* RID / repaired-RID are always removed (the SFU sends one plain stream per subscriber m-line);
* the MID value is replaced by the subscriber's MID.

The usual case is handled in place on a copy of the packet (same size): ids are patched,
removed elements are overwritten with zero padding bytes (legal in both RFC 8285 forms), and a
MID of equal length is overwritten. Only when the shape changes (MID length differs, an id does
not fit the one-byte form, or a MID has to be added) is the block rebuilt.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from .header import (
    EXT_PROFILE_ONE_BYTE,
    EXT_PROFILE_TWO_BYTE,
    EXT_PROFILE_TWO_BYTE_MASK,
    Buffer,
    RtpHeader,
    iter_extensions,
)

__all__ = [
    "URI_ABS_CAPTURE_TIME",
    "URI_ABS_SEND_TIME",
    "URI_AUDIO_LEVEL",
    "URI_DEPENDENCY_DESCRIPTOR",
    "URI_MID",
    "URI_REPAIRED_RID",
    "URI_RID",
    "URI_TOFFSET",
    "URI_TWCC",
    "ExtensionIds",
    "ExtensionRewriter",
    "build_extension_block",
    "parse_audio_level",
    "parse_sdes_string",
    "read_audio_level",
    "read_mid",
    "read_rid",
]

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
URI_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
URI_TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
URI_TOFFSET = "urn:ietf:params:rtp-hdrext:toffset"
URI_ABS_CAPTURE_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time"
URI_DEPENDENCY_DESCRIPTOR = "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"

#: Never forwarded downstream: simulcast identification is between publisher and SFU only.
_ALWAYS_DROPPED = frozenset({URI_RID, URI_REPAIRED_RID})

_EXT_HEADER = struct.Struct("!HH")
_ZEROS = bytes(256)


# ---------------------------------------------------------------------------
# Value parsers
# ---------------------------------------------------------------------------


def parse_audio_level(value: Buffer) -> tuple[bool, int]:
    """RFC 6464: ``(voice_activity, level)`` where level is 0..127 = -dBov (127 = silence)."""
    if len(value) < 1:
        raise ValueError("empty audio-level extension")
    b = value[0]
    return bool(b & 0x80), b & 0x7F


def read_audio_level(data: Buffer, hdr: RtpHeader, ext_id: int) -> int:
    """Raw RFC 6464 byte (``V<<7 | level``) of a parsed packet, or -1 when absent.

    Allocation-free variant for the per-packet active-speaker path.
    """
    if hdr.ext_profile < 0 or ext_id <= 0:
        return -1
    loc = hdr.find_extension(data, ext_id)
    if loc is None:
        return -1
    return data[loc[0]]


def parse_sdes_string(value: Buffer) -> str:
    """RID / repaired-RID / MID values: an ASCII token (RFC 8852, RFC 8843)."""
    return bytes(value).decode("ascii")


def _read_string(data: Buffer, hdr: RtpHeader, ext_id: int) -> str | None:
    if hdr.ext_profile < 0 or ext_id <= 0:
        return None
    loc = hdr.find_extension(data, ext_id)
    if loc is None:
        return None
    return bytes(data[loc[0] : loc[0] + loc[1]]).decode("ascii")


def read_rid(data: Buffer, hdr: RtpHeader, ext_id: int) -> str | None:
    """RID (or repaired RID, given its id) of a parsed packet, or None."""
    return _read_string(data, hdr, ext_id)


def read_mid(data: Buffer, hdr: RtpHeader, ext_id: int) -> str | None:
    return _read_string(data, hdr, ext_id)


class ExtensionIds:
    """Negotiated ids of the extensions the media path reads (0 = not negotiated)."""

    __slots__ = ("abs_send_time", "audio_level", "mid", "repaired_rid", "rid", "twcc")

    def __init__(self, uri_to_id: Mapping[str, int] | None = None) -> None:
        m = uri_to_id or {}
        self.mid = m.get(URI_MID, 0)
        self.rid = m.get(URI_RID, 0)
        self.repaired_rid = m.get(URI_REPAIRED_RID, 0)
        self.audio_level = m.get(URI_AUDIO_LEVEL, 0)
        self.abs_send_time = m.get(URI_ABS_SEND_TIME, 0)
        self.twcc = m.get(URI_TWCC, 0)


# ---------------------------------------------------------------------------
# Rewriter
# ---------------------------------------------------------------------------

_MID_SLOT = -1  # table marker: "write the subscriber's MID here"


def _validate_ids(name: str, ids: Mapping[str, int]) -> None:
    seen: dict[int, str] = {}
    for uri, ext_id in ids.items():
        if not 1 <= ext_id <= 255:
            raise ValueError(f"{name} extension id {ext_id} for {uri} out of range 1..255")
        if ext_id in seen:
            raise ValueError(f"{name} extension id {ext_id} used for {seen[ext_id]} and {uri}")
        seen[ext_id] = uri


class _Plan:
    """How to rewrite one *shape* of extension block (same profile, element ids, lengths and
    padding positions; only values differ). Publishers send the same few shapes over and over,
    so the per-element walk runs once per shape instead of once per packet.

    In-place plans (``ops is None``) overwrite constant bytes at fixed offsets of a same-size
    copy. Rebuild plans assemble a new block from constant pieces and value slices.
    """

    __slots__ = ("check", "expect", "has_elements", "ops", "writes")

    def __init__(
        self,
        check: struct.Struct,
        expect: tuple[int, ...],
        writes: tuple[tuple[int, int, bytes], ...],
        ops: tuple[tuple[int, int, bytes | None], ...] | None,
        has_elements: bool,
    ) -> None:
        self.check = check  # unpacks the non-value bytes, starting at the 4-byte block header
        self.expect = expect
        self.writes = writes  # (start, end, constant) relative to the block header
        self.ops = ops  # (start, end, constant or None = copy input[start:end]) relative to it
        self.has_elements = has_elements


_MAX_PLANS = 16


class ExtensionRewriter:
    """Translate a publisher's extension block into one subscriber's extension space.

    ``publisher_ids`` / ``subscriber_ids`` map extension URI → negotiated id. ``mid`` is the
    subscriber's MID for this m-line (None: leave MID values untouched). With ``add_mid`` a MID
    element is inserted into packets that lack one (libwebrtc itself stops sending MID once the
    SSRC is known, so the default is to rewrite it only where the publisher sent it).

    :attr:`passthrough` is True when the translation is the identity (same ids, nothing to
    drop, no MID value to write); the caller can then skip :meth:`rewrite` entirely.

    The rewriter keeps a small cache of per-shape plans; it holds no per-stream state, so one
    instance may serve every subscriber with the same ids and MID.
    """

    __slots__ = ("_add_mid", "_memo_in", "_memo_out", "_mid", "_mid_id", "_plans", "_table", "passthrough")

    def __init__(
        self,
        publisher_ids: Mapping[str, int],
        subscriber_ids: Mapping[str, int],
        mid: str | bytes | None = None,
        *,
        add_mid: bool = False,
    ) -> None:
        _validate_ids("publisher", publisher_ids)
        _validate_ids("subscriber", subscriber_ids)
        mid_bytes = mid.encode("ascii") if isinstance(mid, str) else mid
        if mid_bytes is not None and not 1 <= len(mid_bytes) <= 255:
            raise ValueError("MID must be 1..255 bytes")
        mid_id = subscriber_ids.get(URI_MID, 0)
        self._mid_id = mid_id if mid_bytes is not None else 0
        self._mid = mid_bytes or b""
        self._add_mid = bool(add_mid and self._mid_id)
        table = [0] * 256
        identity = True
        for uri, in_id in publisher_ids.items():
            out_id = 0 if uri in _ALWAYS_DROPPED else subscriber_ids.get(uri, 0)
            if uri == URI_MID and self._mid_id:
                table[in_id] = _MID_SLOT
                identity = False
                continue
            table[in_id] = out_id
            if out_id != in_id:
                identity = False
        self._table = table
        self._plans: dict[int, _Plan] = {}
        self._memo_in: bytes | None = None
        self._memo_out: bytes = b""
        self.passthrough = identity and not self._add_mid

    @property
    def mid(self) -> bytes:
        return self._mid

    def rewrite(self, data: Buffer, hdr: RtpHeader) -> bytearray:
        """Return a copy of the packet ``data`` (parsed into ``hdr``) with a translated block.

        The fixed header (sequence, timestamp, SSRC, PT) is copied unchanged; the caller
        patches it. The usual case keeps the packet size: ids are patched, removed elements
        become zero padding. If the block has to grow or change form it is rebuilt (and the X
        bit cleared if nothing remains).
        """
        return bytearray(self._translated(data, hdr))

    def write_into(self, buf: memoryview, data: Buffer, hdr: RtpHeader) -> int:
        """Like :meth:`rewrite`, into ``buf`` from offset 0: the length written, 0 if it does not fit."""
        out = self._translated(data, hdr)
        length = len(out)
        if length > len(buf):
            return 0
        buf[:length] = out
        return length

    def _translated(self, data: Buffer, hdr: RtpHeader) -> bytes | bytearray:
        # Subscribers with the same ids and MID share this rewriter, and the fan-out hands it the
        # same packet once per subscriber: translate it once (immutable input only).
        if data is self._memo_in:
            return self._memo_out
        out = self._translate(data, hdr)
        if type(data) is bytes:
            self._memo_in = data
            self._memo_out = bytes(out)
        return out

    def _translate(self, data: Buffer, hdr: RtpHeader) -> bytearray:
        if hdr.ext_profile < 0:
            if not self._add_mid:
                return bytearray(data)
            base = hdr.payload_start
            key = -1
        else:
            base = hdr.ext_start - 4
            size = hdr.ext_end - hdr.ext_start
            key = ((size << 8) | data[hdr.ext_start]) if size else 0
        plan = self._plans.get(key)
        if plan is None or plan.check.unpack_from(data, base) != plan.expect:
            plan = self._make_plan(data, hdr)
            plans = self._plans
            if len(plans) >= _MAX_PLANS:
                plans.clear()
            plans[key] = plan
        ops = plan.ops
        if ops is None:
            buf = bytearray(data)
            for a, b, const in plan.writes:
                buf[base + a : base + b] = const
            return buf
        buf = bytearray(data[:base])
        for a, b, piece in ops:
            buf += data[base + a : base + b] if piece is None else piece
        buf += memoryview(data)[hdr.payload_start :]
        if plan.has_elements:
            buf[0] |= 0x10
        else:
            buf[0] &= 0xEF
        return buf

    def _make_plan(self, data: Buffer, hdr: RtpHeader) -> _Plan:
        """Walk one block and record what to check and what to write for its shape."""
        table = self._table
        mid = self._mid
        mid_id = self._mid_id
        profile = hdr.ext_profile
        fmt = ["!H2x"]  # profile (checked); the block length is part of the cache key
        expect: list[int] = [profile]
        writes: list[tuple[int, bytearray]] = []  # (start rel. to base, bytes); adjacent merged
        # kept elements for a rebuild: (out id, value start rel. to base or -1 for MID, length)
        kept: list[tuple[int, int, int]] = []
        rebuild = False
        saw_mid = False
        if profile < 0:
            base = pos = end = hdr.payload_start
            fmt = []
            expect = []
        else:
            base = hdr.ext_start - 4
            pos = hdr.ext_start
            end = hdr.ext_end
        gap = 0

        def check(at: int, n: int) -> None:
            nonlocal gap
            if gap:
                fmt.append(f"{gap}x")
                gap = 0
            fmt.append("B" * n)
            expect.extend(data[at : at + n])

        def write(at: int, const: bytes) -> None:
            a = at - base
            if writes and writes[-1][0] + len(writes[-1][1]) == a:
                writes[-1][1].extend(const)
            else:
                writes.append((a, bytearray(const)))

        one_byte = profile == EXT_PROFILE_ONE_BYTE
        if profile >= 0 and not one_byte and (profile & EXT_PROFILE_TWO_BYTE_MASK) != EXT_PROFILE_TWO_BYTE:
            rebuild = True  # unknown profile: nothing we can translate; drop the block
            pos = end
        while pos < end:
            ext_id = data[pos]
            if ext_id == 0:
                check(pos, 1)
                pos += 1
                continue
            if one_byte:
                ext_id >>= 4
                hlen = 1
                nxt = pos + 2 + (data[pos] & 0x0F)
                bad = ext_id == 15 or nxt > end
            else:
                hlen = 2
                bad = pos + 1 >= end or pos + 2 + data[pos + 1] > end
                nxt = end if bad else pos + 2 + data[pos + 1]
            if bad:
                # Terminator or malformed: blank the rest so nothing unknown leaks through.
                check(pos, 1)
                write(pos, _ZEROS[: end - pos])
                break
            check(pos, hlen)
            length = nxt - pos - hlen
            out_id = table[ext_id]
            if out_id == _MID_SLOT:
                saw_mid = True
                kept.append((mid_id, -1, len(mid)))
                if len(mid) != length or (one_byte and mid_id > 14):
                    rebuild = True
                else:
                    head = bytes([(mid_id << 4) | (length - 1)]) if one_byte else bytes([mid_id, length])
                    write(pos, head + mid)
            elif out_id == 0:
                write(pos, _ZEROS[: nxt - pos])
            else:
                kept.append((out_id, pos + hlen - base, length))
                if out_id != ext_id:
                    if one_byte and out_id > 14:
                        rebuild = True
                    else:
                        write(pos, bytes([(out_id << 4) | (length - 1)]) if one_byte else bytes([out_id]))
            gap += length
            pos = nxt
        if self._add_mid and not saw_mid:
            kept.insert(0, (mid_id, -1, len(mid)))
            rebuild = True
        if gap:
            fmt.append(f"{gap}x")
        check_struct = struct.Struct("".join(fmt))
        if not rebuild:
            frozen = tuple((a, a + len(c), bytes(c)) for a, c in writes)
            return _Plan(check_struct, tuple(expect), frozen, None, True)
        return _Plan(check_struct, tuple(expect), (), self._rebuild_ops(kept), bool(kept))

    def _rebuild_ops(self, kept: list[tuple[int, int, int]]) -> tuple[tuple[int, int, bytes | None], ...]:
        if not kept:
            return ()
        one_byte = all(1 <= i <= 14 and 1 <= n <= 16 for i, _, n in kept)
        if not one_byte and any(n > 255 for _, _, n in kept):
            raise ValueError("extension value too long for the two-byte form")
        hlen = 1 if one_byte else 2
        body_len = sum(hlen + n for _, _, n in kept)
        pad = -body_len % 4
        ops: list[tuple[int, int, bytearray | None]] = []  # consecutive constants merged

        def const(piece: bytes) -> None:
            last = ops[-1][2] if ops else None
            if last is not None:
                last.extend(piece)
            else:
                ops.append((0, 0, bytearray(piece)))

        const(struct.pack("!HH", EXT_PROFILE_ONE_BYTE if one_byte else EXT_PROFILE_TWO_BYTE, (body_len + pad) // 4))
        for out_id, at, n in kept:
            const(bytes([(out_id << 4) | (n - 1)]) if one_byte else bytes([out_id, n]))
            if at < 0:
                const(self._mid)
            else:
                ops.append((at, at + n, None))
        const(_ZEROS[:pad])
        return tuple((a, b, None if p is None else bytes(p)) for a, b, p in ops)

    def translate_elements(self, data: Buffer, hdr: RtpHeader) -> list[tuple[int, bytes]]:
        """The translated ``(subscriber_id, value)`` list (slow path / diagnostics)."""
        table = self._table
        out: list[tuple[int, bytes]] = []
        saw_mid = False
        if hdr.ext_profile >= 0:
            for ext_id, off, length in iter_extensions(data, hdr.ext_start, hdr.ext_end, hdr.ext_profile):
                out_id = table[ext_id]
                if out_id == _MID_SLOT:
                    out.append((self._mid_id, self._mid))
                    saw_mid = True
                elif out_id:
                    out.append((out_id, bytes(data[off : off + length])))
        if self._add_mid and not saw_mid:
            out.insert(0, (self._mid_id, self._mid))
        return out


def build_extension_block(elements: list[tuple[int, bytes]]) -> bytes:
    """Serialize ``(id, value)`` pairs as an extension block including its 4-byte header.

    Uses the one-byte form when every id is 1..14 and every value 1..16 bytes, else two-byte.
    """
    one_byte = all(1 <= i <= 14 and 1 <= len(v) <= 16 for i, v in elements)
    body = bytearray()
    if one_byte:
        for i, v in elements:
            body.append((i << 4) | (len(v) - 1))
            body += v
        profile = EXT_PROFILE_ONE_BYTE
    else:
        for i, v in elements:
            if not 1 <= i <= 255 or len(v) > 255:
                raise ValueError(f"extension {i} with {len(v)} bytes cannot be encoded")
            body.append(i)
            body.append(len(v))
            body += v
        profile = EXT_PROFILE_TWO_BYTE
    body += _ZEROS[: -len(body) % 4]
    return _EXT_HEADER.pack(profile, len(body) // 4) + bytes(body)
