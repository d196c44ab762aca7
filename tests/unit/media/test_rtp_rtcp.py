from __future__ import annotations

import random

import pytest
from aiortc.rtp import (
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    pack_remb_fci,
)

from services.media.rtp import rtcp
from services.media.rtp.header import is_rtcp
from services.media.rtp.rtcp import (
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    RtcpOther,
    SenderReport,
)

BLOCK = ReportBlock(0x01020304, 25, 1234, 0x0001FFFF, 77, 0x11112222, 0x00018000)
NEG = ReportBlock(5, 255, -3, 70000, 0, 0, 0)


def test_pli_exact_bytes_and_round_trip() -> None:
    data = rtcp.build_pli(0x11111111, 0x22222222)
    assert data == bytes.fromhex("81ce0002 11111111 22222222")
    assert is_rtcp(data)
    assert rtcp.parse_pli(data) == Pli(0x11111111, 0x22222222)
    ref = RtcpPacket.parse(data)[0]
    assert isinstance(ref, RtcpPsfbPacket) and (ref.fmt, ref.ssrc, ref.media_ssrc) == (1, 0x11111111, 0x22222222)


def test_fir_exact_bytes_and_round_trip() -> None:
    data = rtcp.build_fir(1, 0xAABBCCDD, 258)
    assert data == bytes.fromhex("84ce0004 00000001 00000000 aabbccdd 02000000")
    assert rtcp.parse_fir(data) == Fir(1, ((0xAABBCCDD, 2),))


def test_sr_round_trip_and_aiortc_agrees() -> None:
    ntp = rtcp.ntp_from_seconds(1_700_000_000.25)
    data = rtcp.build_sr(0xCAFE, ntp, 0x1_0000_0005, 10, 20, [BLOCK, NEG])
    assert len(data) == 28 + 48
    assert data[:4] == bytes.fromhex("82c8") + (len(data) // 4 - 1).to_bytes(2, "big")
    sr = rtcp.parse_sr(data)
    assert sr == SenderReport(0xCAFE, ntp, 5, 10, 20, (BLOCK, NEG))
    assert rtcp.ntp_to_seconds(sr.ntp) == pytest.approx(1_700_000_000.25, abs=1e-6)
    ref = RtcpPacket.parse(data)[0]
    assert isinstance(ref, RtcpSrPacket)
    assert ref.sender_info.ntp_timestamp == ntp and ref.sender_info.rtp_timestamp == 5
    assert ref.reports[1].packets_lost == -3 and ref.reports[0].fraction_lost == 25
    assert ref.reports[0].dlsr == BLOCK.dlsr and ref.reports[0].highest_sequence == BLOCK.highest_seq
    # and the reverse: aiortc-built SR parsed by us
    theirs = bytes(
        RtcpSrPacket(
            ssrc=9,
            sender_info=RtcpSenderInfo(ntp_timestamp=ntp, rtp_timestamp=77, packet_count=3, octet_count=4),
            reports=[RtcpReceiverInfo(7, 1, -100, 2, 3, 4, 5)],
        )
    )
    assert rtcp.parse_sr(theirs) == SenderReport(9, ntp, 77, 3, 4, (ReportBlock(7, 1, -100, 2, 3, 4, 5),))


def test_rr_round_trip() -> None:
    data = rtcp.build_rr(0xABC, [BLOCK])
    assert rtcp.parse_rr(data) == ReceiverReport(0xABC, (BLOCK,))
    assert rtcp.parse_rr(rtcp.build_rr(1)) == ReceiverReport(1, ())
    ref = RtcpPacket.parse(data)[0]
    assert isinstance(ref, RtcpRrPacket) and ref.reports[0].jitter == 77
    theirs = bytes(RtcpRrPacket(ssrc=2, reports=[RtcpReceiverInfo(3, 4, 5, 6, 7, 8, 9)]))
    assert rtcp.parse_rr(theirs) == ReceiverReport(2, (ReportBlock(3, 4, 5, 6, 7, 8, 9),))
    # cumulative loss is clamped to 24-bit signed range
    big = rtcp.build_rr(1, [ReportBlock(1, 0, 10**9, 0, 0, 0, 0)])
    assert rtcp.parse_rr(big).reports[0].cumulative_lost == 0x7FFFFF


def test_remb_round_trip_and_encoding() -> None:
    data = rtcp.build_remb(0x1234, 1_500_000, [0x11, 0x22])
    remb = rtcp.parse_remb(data)
    assert remb.sender_ssrc == 0x1234 and remb.ssrcs == (0x11, 0x22)
    assert 1_500_000 - remb.bitrate < 1_500_000 / 2**17  # 18-bit mantissa precision
    # our FCI equals aiortc's packing
    assert data[12:] == pack_remb_fci(1_500_000, [0x11, 0x22])
    assert data[:4] == bytes.fromhex("8fce0006")
    small = rtcp.parse_remb(rtcp.build_remb(1, 100_000, []))
    assert small == Remb(1, 100_000, ())
    theirs = bytes(RtcpPsfbPacket(fmt=15, ssrc=5, media_ssrc=0, fci=pack_remb_fci(2_000_000, [9])))
    parsed = rtcp.parse_remb(theirs)
    assert parsed.ssrcs == (9,) and abs(parsed.bitrate - 2_000_000) < 16


def test_nack_exact_bytes_and_round_trip() -> None:
    data = rtcp.build_nack(1, 2, [100, 101, 103, 116, 117, 200])
    # pid 100 blp bits 0(101), 2(103), 15(116); 117 starts a new entry; then 200
    assert data == bytes.fromhex("81cd0005 00000001 00000002 00648005 00750000 00c80000")
    assert rtcp.parse_nack(data) == Nack(1, 2, (100, 101, 103, 116, 117, 200))
    ref = RtcpPacket.parse(data)[0]
    assert isinstance(ref, RtcpRtpfbPacket) and ref.lost == [100, 101, 103, 116, 117, 200]
    theirs = bytes(RtcpRtpfbPacket(fmt=1, ssrc=3, media_ssrc=4, lost=[7, 9, 40]))
    assert rtcp.parse_nack(theirs) == Nack(3, 4, (7, 9, 40))
    with pytest.raises(ValueError):
        rtcp.build_nack(1, 2, [])


def test_nack_wraparound_and_any_order() -> None:
    data = rtcp.build_nack(1, 2, [1, 65534, 0, 65535, 65534])
    assert rtcp.parse_nack(data).seqs == (65534, 65535, 0, 1)
    assert len(data) == 16  # one FCI entry
    rnd = random.Random(1)
    for _ in range(100):
        base = rnd.randrange(65536)
        seqs = {(base + rnd.randrange(300)) & 0xFFFF for _ in range(rnd.randrange(1, 40))}
        got = rtcp.parse_nack(rtcp.build_nack(1, 2, list(seqs))).seqs
        assert sorted(got) == sorted(seqs)


def test_compound_split_and_parse() -> None:
    sdes_like = bytes.fromhex("81ca0003 00000009 01026869 00000000")
    compound = (
        rtcp.build_sr(9, 1 << 40, 5, 1, 2)
        + sdes_like
        + rtcp.build_pli(9, 10)
        + rtcp.build_remb(9, 300_000, [10])
        + rtcp.build_nack(9, 10, [5])
        + rtcp.build_fir(9, 10, 1)
        + rtcp.build_rr(9)
        + bytes(RtcpByePacket(sources=[9]))
    )
    parts = rtcp.split_compound(compound)
    assert b"".join(parts) == compound
    assert [p[1] for p in parts] == [200, 202, 206, 206, 205, 206, 201, 203]
    parsed = rtcp.parse_compound(compound)
    kinds = [type(p) for p in parsed]
    assert kinds == [SenderReport, RtcpOther, Pli, Remb, Nack, Fir, ReceiverReport, RtcpOther]
    assert parsed[1] == RtcpOther(202, 1, sdes_like)
    assert [(pt, count) for pt, count, _s, _e in rtcp.iter_compound(compound)][:3] == [(200, 0), (202, 1), (206, 1)]


def test_padding_and_malformed() -> None:
    padded = bytearray(rtcp.build_pli(1, 2) + b"\x00\x00\x00\x04")
    padded[0] |= 0x20
    padded[2:4] = (3).to_bytes(2, "big")
    [(pt, fmt, start, end)] = list(rtcp.iter_compound(bytes(padded)))
    assert (pt, fmt, start, end) == (206, 1, 0, 12)
    assert rtcp.parse_pli(bytes(padded)) == Pli(1, 2)
    with pytest.raises(ValueError):
        rtcp.split_compound(rtcp.build_pli(1, 2)[:-1])
    with pytest.raises(ValueError):
        rtcp.split_compound(b"\x40" + rtcp.build_pli(1, 2)[1:])
    with pytest.raises(ValueError):
        rtcp.parse_pli(rtcp.build_rr(1))
    with pytest.raises(ValueError):
        rtcp.parse_nack(rtcp.build_pli(1, 2))  # wrong PT
    with pytest.raises(ValueError):
        rtcp.parse_sr(bytes.fromhex("81c80006") + bytes(24))  # claims a report block it lacks
    bad_pad = bytearray(rtcp.build_pli(1, 2))
    bad_pad[0] |= 0x20
    bad_pad[-1] = 0
    with pytest.raises(ValueError):
        rtcp.split_compound(bytes(bad_pad))


def test_ntp_helpers() -> None:
    ntp = rtcp.ntp_from_seconds(0.5)
    assert ntp >> 32 == rtcp.NTP_EPOCH_OFFSET
    assert ntp & 0xFFFFFFFF == 1 << 31
    assert rtcp.ntp_middle(0x1122334455667788) == 0x33445566


def test_sr_sdes_bye_compound_aiortc_parses_it() -> None:
    sr = rtcp.build_sr(0x1234, 0xAABBCCDD11223344, 9000, 7, 700)
    # (aiortc's parser only realigns between chunks when the terminator takes 2 bytes: lengths 4k)
    sdes = rtcp.build_sdes([(0x1234, b"cname-01"), (0x5678, b"abcd")]) + rtcp.build_sdes([(0x9, b"odd")])
    bye = rtcp.build_bye([0x1234, 0x5678])
    assert len(sdes) % 4 == 0
    parsed = RtcpPacket.parse(sr + sdes + bye)
    assert [type(p) for p in parsed] == [RtcpSrPacket, RtcpSdesPacket, RtcpSdesPacket, RtcpByePacket]
    assert parsed[0].ssrc == 0x1234 and parsed[0].sender_info.rtp_timestamp == 9000
    chunks = parsed[1].chunks
    assert [(c.ssrc, c.items) for c in chunks] == [(0x1234, [(1, b"cname-01")]), (0x5678, [(1, b"abcd")])]
    assert [(c.ssrc, c.items) for c in parsed[2].chunks] == [(0x9, [(1, b"odd")])]
    assert parsed[3].sources == [0x1234, 0x5678]
    with pytest.raises(ValueError):
        rtcp.build_sdes([(1, b"x" * 256)])


def test_lazy_bitrate_estimator_builds_on_first_use_and_behaves_the_same() -> None:
    from aiortc.rate import RemoteBitrateEstimator
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    from services.media.webrtc import aiortc_compat, lazy_estimator

    aiortc_compat.install()
    class OpenTransport:  # all RTCRtpReceiver.__init__ reads of its transport
        state = "new"

    receiver = RTCRtpReceiver("video", transport=OpenTransport())  # type: ignore[arg-type]
    estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator  # type: ignore[attr-defined]
    assert isinstance(estimator, lazy_estimator.LazyRemoteBitrateEstimator) and not estimator.built
    real = RemoteBitrateEstimator()
    for i in range(50):  # abs-send-time every 10 ms, 1200 bytes: both report the same
        args = (1000 + 10 * i, (i * 10 << 18) // 1000 & 0xFFFFFF, 1200, 1234)
        assert estimator.add(*args) == real.add(*args)
    assert estimator.built
