"""DownTrack drops a publisher's padding-only packets without leaving a sequence gap, and NACKs
of packets on either side of the skip still find their source."""

from __future__ import annotations

import struct

from services.media.rtp.codecs import Codec
from services.media.rtp.forwarder import DownTrack, SourcePacket

from .test_rtp_forwarder import OUT_SSRC, VP8_PT_IN, VP8_PT_OUT, rtp, vp8_payload

SSRC = 0x1111


def padding_only(seq: int, ts: int) -> bytes:
    head = struct.pack("!BBHII", 0x80 | 0x20, VP8_PT_IN, seq, ts, SSRC)
    return head + bytes(199) + bytes([200])  # 200 bytes of padding, no payload


def out_seq(packet: bytes | None) -> int:
    assert packet is not None
    return int(struct.unpack_from("!H", packet, 2)[0])


def test_padding_is_dropped_and_sequence_numbers_stay_contiguous() -> None:
    down = DownTrack(OUT_SSRC, Codec.VP8, 90000, {VP8_PT_IN: VP8_PT_OUT})
    src = SourcePacket(Codec.VP8)

    def send(packet: bytes) -> bytes | None:
        return down.rewrite(packet, src.load(packet, 0))

    first = send(rtp(1000, 0, SSRC, vp8_payload(1, 1, start=True, key=True, body=b"k" * 50), marker=True))
    assert send(padding_only(1001, 0)) is None
    assert send(padding_only(1002, 0)) is None
    second = send(rtp(1003, 3000, SSRC, vp8_payload(2, 2, start=True, key=False, body=b"d" * 50), marker=True))
    assert send(padding_only(1004, 3000)) is None
    third = send(rtp(1005, 6000, SSRC, vp8_payload(3, 3, start=True, key=False, body=b"d" * 50), marker=True))
    seqs = [out_seq(p) for p in (first, second, third)]
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]
    assert [down.translate_nack(s) for s in seqs] == [(0, SSRC, 1000), (0, SSRC, 1003), (0, SSRC, 1005)]
    assert down.packets_sent == 3 and down.packets_dropped == 3
    # a retransmission of the middle packet goes out under the number the subscriber knows
    cached = rtp(1003, 3000, SSRC, vp8_payload(2, 2, start=True, key=False, body=b"d" * 50), marker=True)
    assert out_seq(down.rewrite_retransmission(cached, seqs[1])) == seqs[1]


def test_audio_padding_is_left_alone() -> None:
    down = DownTrack(OUT_SSRC, Codec.OPUS, 48000, {VP8_PT_IN: VP8_PT_OUT})
    src = SourcePacket(Codec.OPUS)
    first, pad = rtp(5, 0, SSRC, b"opus"), padding_only(6, 960)
    assert down.rewrite(first, src.load(first, 0)) is not None
    assert down.rewrite(pad, src.load(pad, 0)) is not None
