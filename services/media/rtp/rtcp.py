"""Bytes-level RTCP (RFC 3550, RFC 4585, RFC 5104, draft-alvestrand-rmcat-remb).

Parsing returns small slotted dataclasses; building returns ``bytes``. RTCP rates are low
(a few packets per second per stream), so clarity wins over micro-optimisation here, but no
intermediate object layer is used: everything is ``struct`` on the wire format.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from .header import Buffer

__all__ = [
    "PT_APP",
    "PT_BYE",
    "PT_PSFB",
    "PT_RR",
    "PT_RTPFB",
    "PT_SDES",
    "PT_SR",
    "Fir",
    "Nack",
    "Pli",
    "ReceiverReport",
    "Remb",
    "ReportBlock",
    "RtcpOther",
    "SenderReport",
    "build_bye",
    "build_fir",
    "build_nack",
    "build_pli",
    "build_remb",
    "build_rr",
    "build_sdes",
    "build_sr",
    "iter_compound",
    "nack_seqs",
    "ntp_from_seconds",
    "ntp_middle",
    "ntp_to_seconds",
    "parse_compound",
    "parse_fir",
    "parse_nack",
    "parse_pli",
    "parse_remb",
    "parse_rr",
    "parse_sr",
    "split_compound",
]

PT_SR = 200
PT_RR = 201
PT_SDES = 202
PT_BYE = 203
PT_APP = 204
PT_RTPFB = 205
PT_PSFB = 206

FMT_NACK = 1  # RTPFB generic NACK
FMT_PLI = 1  # PSFB
FMT_FIR = 4  # PSFB
FMT_AFB = 15  # PSFB application layer feedback (REMB)

_HDR = struct.Struct("!BBH")
_U32 = struct.Struct("!I")
_SR_INFO = struct.Struct("!IQIII")  # ssrc, ntp, rtp ts, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # ssrc, fraction<<24|lost, highest, jitter, lsr, dlsr
_FB = struct.Struct("!II")  # sender ssrc, media ssrc
_FIR_ENTRY = struct.Struct("!IB3x")
_NACK_ENTRY = struct.Struct("!HH")
_REMB_ID = b"REMB"


# ---------------------------------------------------------------------------
# NTP helpers
# ---------------------------------------------------------------------------

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01


def ntp_from_seconds(unix_seconds: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point since 1900) from a Unix time."""
    secs = unix_seconds + NTP_EPOCH_OFFSET
    whole = int(secs)
    return ((whole & 0xFFFFFFFF) << 32) | int((secs - whole) * (1 << 32))


def ntp_to_seconds(ntp: int) -> float:
    """Unix time from a 64-bit NTP timestamp."""
    return (ntp >> 32) - NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp, as used in LSR (RFC 3550 §6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


# ---------------------------------------------------------------------------
# Parsed packet types
# ---------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class ReportBlock:
    ssrc: int
    fraction_lost: int  # 0..255, fixed point /256
    cumulative_lost: int  # signed 24-bit
    highest_seq: int  # extended highest sequence number received
    jitter: int
    lsr: int
    dlsr: int  # 1/65536 s


@dataclass(slots=True, frozen=True)
class SenderReport:
    ssrc: int
    ntp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(slots=True, frozen=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(slots=True, frozen=True)
class Pli:
    sender_ssrc: int
    media_ssrc: int


@dataclass(slots=True, frozen=True)
class Fir:
    sender_ssrc: int
    #: ``(media ssrc, command sequence number)`` per FCI entry.
    entries: tuple[tuple[int, int], ...]


@dataclass(slots=True, frozen=True)
class Remb:
    sender_ssrc: int
    bitrate: int  # bits per second
    ssrcs: tuple[int, ...]


@dataclass(slots=True, frozen=True)
class Nack:
    sender_ssrc: int
    media_ssrc: int
    seqs: tuple[int, ...]


@dataclass(slots=True, frozen=True)
class RtcpOther:
    packet_type: int
    count: int  # RC / FMT field
    data: bytes = field(repr=False)


RtcpPacket = SenderReport | ReceiverReport | Pli | Fir | Remb | Nack | RtcpOther


# ---------------------------------------------------------------------------
# Compound splitting
# ---------------------------------------------------------------------------


def iter_compound(data: Buffer) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(packet_type, count_or_fmt, start, end)`` for each packet of a compound.

    ``end`` excludes padding of a packet with the P bit. Raises ``ValueError`` on a malformed
    packet (bad version, length beyond the buffer, bad padding).
    """
    pos = 0
    n = len(data)
    while pos < n:
        if n - pos < 4:
            raise ValueError("truncated RTCP header")
        b0, pt, words = _HDR.unpack_from(data, pos)
        if b0 >> 6 != 2:
            raise ValueError("RTCP version is not 2")
        nxt = pos + 4 * (words + 1)
        if nxt > n:
            raise ValueError("RTCP length exceeds buffer")
        end = nxt
        if b0 & 0x20:
            pad = data[nxt - 1]
            if pad == 0 or pad > nxt - pos - 4:
                raise ValueError("invalid RTCP padding")
            end = nxt - pad
        yield pt, b0 & 0x1F, pos, end
        pos = nxt


def split_compound(data: Buffer) -> list[bytes]:
    """The individual RTCP packets of a compound packet (each with its own header)."""
    out = []
    for _pt, _count, start, _end in iter_compound(data):
        words = _HDR.unpack_from(data, start)[2]
        pos = start + 4 * (words + 1)
        out.append(bytes(data[start:pos]))
    return out


# ---------------------------------------------------------------------------
# Parsers (each takes one packet, header included)
# ---------------------------------------------------------------------------


def _header(data: Buffer, expect_pt: int) -> tuple[int, int]:
    """Validate one packet's header; return ``(count, end)``."""
    for pt, count, _start, end in iter_compound(data):
        if pt != expect_pt:
            raise ValueError(f"expected RTCP type {expect_pt}, got {pt}")
        return count, end
    raise ValueError("empty RTCP packet")


def _blocks(data: Buffer, pos: int, count: int, end: int) -> tuple[ReportBlock, ...]:
    if pos + 24 * count > end:
        raise ValueError("RTCP report blocks truncated")
    out = []
    for _ in range(count):
        ssrc, lost, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, pos)
        cumulative = lost & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 0x1000000
        out.append(ReportBlock(ssrc, lost >> 24, cumulative, highest, jitter, lsr, dlsr))
        pos += 24
    return tuple(out)


def parse_sr(data: Buffer) -> SenderReport:
    count, end = _header(data, PT_SR)
    if end < 28:
        raise ValueError("SR truncated")
    ssrc, ntp, rtp_ts, packets, octets = _SR_INFO.unpack_from(data, 4)
    return SenderReport(ssrc, ntp, rtp_ts, packets, octets, _blocks(data, 28, count, end))


def parse_rr(data: Buffer) -> ReceiverReport:
    count, end = _header(data, PT_RR)
    if end < 8:
        raise ValueError("RR truncated")
    return ReceiverReport(_U32.unpack_from(data, 4)[0], _blocks(data, 8, count, end))


def _feedback(data: Buffer, pt: int, fmt: int) -> tuple[int, int, int]:
    count, end = _header(data, pt)
    if count != fmt:
        raise ValueError(f"expected feedback FMT {fmt}, got {count}")
    if end < 12:
        raise ValueError("feedback packet truncated")
    sender, media = _FB.unpack_from(data, 4)
    return sender, media, end


def parse_pli(data: Buffer) -> Pli:
    sender, media, _ = _feedback(data, PT_PSFB, FMT_PLI)
    return Pli(sender, media)


def parse_fir(data: Buffer) -> Fir:
    sender, _media, end = _feedback(data, PT_PSFB, FMT_FIR)
    entries = []
    for pos in range(12, end - 7, 8):
        ssrc, seq_nr = _FIR_ENTRY.unpack_from(data, pos)
        entries.append((ssrc, seq_nr))
    return Fir(sender, tuple(entries))


def parse_remb(data: Buffer) -> Remb:
    sender, _media, end = _feedback(data, PT_PSFB, FMT_AFB)
    if end < 20 or bytes(data[12:16]) != _REMB_ID:
        raise ValueError("not a REMB packet")
    word = _U32.unpack_from(data, 16)[0]
    num = word >> 24
    exp = (word >> 18) & 0x3F
    mantissa = word & 0x3FFFF
    if 20 + 4 * num > end:
        raise ValueError("REMB SSRC list truncated")
    ssrcs = struct.unpack_from(f"!{num}I", data, 20)
    return Remb(sender, mantissa << exp, ssrcs)


def nack_seqs(pid: int, blp: int) -> list[int]:
    """Sequence numbers named by one generic NACK FCI entry."""
    seqs = [pid]
    for bit in range(16):
        if blp & (1 << bit):
            seqs.append((pid + bit + 1) & 0xFFFF)
    return seqs


def parse_nack(data: Buffer) -> Nack:
    sender, media, end = _feedback(data, PT_RTPFB, FMT_NACK)
    seqs: list[int] = []
    for pos in range(12, end - 3, 4):
        pid, blp = _NACK_ENTRY.unpack_from(data, pos)
        seqs.extend(nack_seqs(pid, blp))
    return Nack(sender, media, tuple(seqs))


def parse_compound(data: Buffer) -> list[RtcpPacket]:
    """Parse every packet of a compound; unknown types come back as :class:`RtcpOther`."""
    out: list[RtcpPacket] = []
    for pt, count, start, _end in iter_compound(data):
        words = _HDR.unpack_from(data, start)[2]
        one = bytes(data[start : start + 4 * (words + 1)])
        parsed: RtcpPacket
        if pt == PT_SR:
            parsed = parse_sr(one)
        elif pt == PT_RR:
            parsed = parse_rr(one)
        elif pt == PT_PSFB and count == FMT_PLI:
            parsed = parse_pli(one)
        elif pt == PT_PSFB and count == FMT_FIR:
            parsed = parse_fir(one)
        elif pt == PT_PSFB and count == FMT_AFB and one[12:16] == _REMB_ID:
            parsed = parse_remb(one)
        elif pt == PT_RTPFB and count == FMT_NACK:
            parsed = parse_nack(one)
        else:
            parsed = RtcpOther(pt, count, one)
        out.append(parsed)
    return out


# ---------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------


def _packet(pt: int, count: int, body: bytes) -> bytes:
    if len(body) % 4:
        raise ValueError("RTCP body must be a multiple of 4 bytes")
    return _HDR.pack(0x80 | count, pt, len(body) // 4) + body


def _pack_blocks(blocks: Sequence[ReportBlock]) -> bytes:
    if len(blocks) > 31:
        raise ValueError("at most 31 report blocks per packet")
    out = bytearray()
    for b in blocks:
        lost = max(-0x800000, min(0x7FFFFF, b.cumulative_lost)) & 0xFFFFFF
        out += _BLOCK.pack(b.ssrc, ((b.fraction_lost & 0xFF) << 24) | lost, b.highest_seq, b.jitter, b.lsr, b.dlsr)
    return bytes(out)


def build_sr(
    ssrc: int,
    ntp: int,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    reports: Sequence[ReportBlock] = (),
) -> bytes:
    body = _SR_INFO.pack(ssrc, ntp, rtp_timestamp & 0xFFFFFFFF, packet_count & 0xFFFFFFFF, octet_count & 0xFFFFFFFF)
    return _packet(PT_SR, len(reports), body + _pack_blocks(reports))


def build_rr(ssrc: int, reports: Sequence[ReportBlock] = ()) -> bytes:
    return _packet(PT_RR, len(reports), _U32.pack(ssrc) + _pack_blocks(reports))


def build_sdes(chunks: Sequence[tuple[int, bytes]]) -> bytes:
    """SDES with one CNAME item per ``(ssrc, cname)`` chunk (RFC 3550 §6.5)."""
    if len(chunks) > 31:
        raise ValueError("at most 31 SDES chunks per packet")
    body = bytearray()
    for ssrc, cname in chunks:
        if len(cname) > 255:
            raise ValueError("CNAME longer than 255 bytes")
        chunk = _U32.pack(ssrc) + bytes((1, len(cname))) + cname
        body += chunk + bytes(4 - len(chunk) % 4)  # item list ends with 1-4 zero bytes
    return _packet(PT_SDES, len(chunks), bytes(body))


def build_bye(ssrcs: Sequence[int]) -> bytes:
    if len(ssrcs) > 31:
        raise ValueError("at most 31 SSRCs per BYE")
    return _packet(PT_BYE, len(ssrcs), b"".join(_U32.pack(ssrc) for ssrc in ssrcs))


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return _packet(PT_PSFB, FMT_PLI, _FB.pack(sender_ssrc, media_ssrc))


def build_fir(sender_ssrc: int, media_ssrc: int, seq_nr: int) -> bytes:
    """FIR (RFC 5104 §4.3.1). ``seq_nr`` must increase (mod 256) for each new request."""
    # The common "media source" field is unused (0); the target SSRC goes in the FCI.
    body = _FB.pack(sender_ssrc, 0) + _FIR_ENTRY.pack(media_ssrc, seq_nr & 0xFF)
    return _packet(PT_PSFB, FMT_FIR, body)


def build_remb(sender_ssrc: int, bitrate: int, ssrcs: Sequence[int]) -> bytes:
    if bitrate < 0:
        raise ValueError("negative bitrate")
    if len(ssrcs) > 255:
        raise ValueError("at most 255 SSRCs in a REMB")
    exp = 0
    mantissa = int(bitrate)
    while mantissa > 0x3FFFF:
        mantissa >>= 1
        exp += 1
    if exp > 63:
        raise ValueError("bitrate too large for REMB")
    body = (
        _FB.pack(sender_ssrc, 0)
        + _REMB_ID
        + _U32.pack((len(ssrcs) << 24) | (exp << 18) | mantissa)
        + struct.pack(f"!{len(ssrcs)}I", *ssrcs)
    )
    return _packet(PT_PSFB, FMT_AFB, body)


def _nack_entries(seqs: Iterable[int]) -> list[tuple[int, int]]:
    ordered = sorted({s & 0xFFFF for s in seqs})
    if not ordered:
        return []
    # Start right after the largest circular gap, so a run crossing 65535 -> 0 stays together.
    n = len(ordered)
    start = 0
    widest = -1
    for i in range(n):
        gap = (ordered[i] - ordered[i - 1]) & 0xFFFF if n > 1 else 0
        if gap > widest:
            widest, start = gap, i
    ordered = ordered[start:] + ordered[:start]
    entries: list[tuple[int, int]] = []
    pid = ordered[0]
    blp = 0
    for s in ordered[1:]:
        d = (s - pid) & 0xFFFF
        if 1 <= d <= 16:
            blp |= 1 << (d - 1)
        else:
            entries.append((pid, blp))
            pid, blp = s, 0
    entries.append((pid, blp))
    return entries


def build_nack(sender_ssrc: int, media_ssrc: int, seqs: Iterable[int]) -> bytes:
    """Generic NACK (RFC 4585 §6.2.1) naming ``seqs``, packed into as few PID/BLP entries as
    a sorted, wrap-aware walk allows."""
    entries = _nack_entries(seqs)
    if not entries:
        raise ValueError("no sequence numbers to NACK")
    body = _FB.pack(sender_ssrc, media_ssrc) + b"".join(_NACK_ENTRY.pack(p, b) for p, b in entries)
    return _packet(PT_RTPFB, FMT_NACK, body)
