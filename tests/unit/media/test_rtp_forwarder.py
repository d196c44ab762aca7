from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from services.media.rtp import rtcp
from services.media.rtp.codecs import Codec, Vp8Descriptor
from services.media.rtp.extensions import (
    URI_ABS_SEND_TIME,
    URI_MID,
    URI_RID,
    URI_TWCC,
    ExtensionRewriter,
    build_extension_block,
)
from services.media.rtp.forwarder import DownTrack, NackTarget, SourcePacket
from services.media.rtp.header import RtpHeader
from services.media.rtp.packet_cache import PacketCache

OUT_SSRC = 0x5EED5EED
VP8_PT_IN, VP8_PT_OUT = 96, 120
OPUS_PT_IN, OPUS_PT_OUT = 111, 109


def rtp(
    seq: int,
    ts: int,
    ssrc: int,
    payload: bytes,
    *,
    pt: int = VP8_PT_IN,
    marker: bool = False,
    ext: list[tuple[int, bytes]] | None = None,
) -> bytes:
    b0 = 0x80 | (0x10 if ext else 0)
    head = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    return head + (build_extension_block(ext) if ext else b"") + payload


def vp8_payload(picture_id: int, tl0: int, *, start: bool, key: bool, body: bytes) -> bytes:
    # X=1 S=start PID=0 | I=1 L=1 T=1 | M=1 15-bit picture id | TL0PICIDX | TID=0
    desc = bytes([0x90 if start else 0x80, 0xE0, 0x80 | (picture_id >> 8), picture_id & 0xFF, tl0, 0x00])
    if start:
        tag = (0 if key else 1) | 0x10 | (100 << 5)
        header = struct.pack("<I", tag)[:3] + (b"\x9d\x01\x2a" + struct.pack("<HH", 640, 360) if key else b"")
        return desc + header + body
    return desc + body


@dataclass
class Layer:
    layer: int
    ssrc: int
    seq: int
    ts: int
    pid: int
    tl0: int
    packets_per_frame: int
    key_frames: tuple[int, ...]


@dataclass
class Sent:
    layer: int
    src_ssrc: int
    src_seq: int
    frame: int
    key: bool
    data: bytes
    src: bytes


def simulcast_stream(layers: list[Layer], frames: range, fps: int = 30):
    """Yield (frame, layer, keyframe-start?, arrival, packet) interleaving all layers per frame."""
    for f in frames:
        arrival = f / fps
        for lay in layers:
            key = f in lay.key_frames
            for k in range(lay.packets_per_frame):
                body = bytes([lay.layer, f & 0xFF, k]) * 20
                payload = vp8_payload(lay.pid & 0x7FFF, lay.tl0 & 0xFF, start=k == 0, key=key, body=body)
                data = rtp(lay.seq, lay.ts, lay.ssrc, payload, marker=k == lay.packets_per_frame - 1)
                yield f, lay.layer, key and k == 0, arrival, data
                lay.seq = (lay.seq + 1) & 0xFFFF
            lay.ts = (lay.ts + 90000 // fps) & 0xFFFFFFFF
            lay.pid = (lay.pid + 1) & 0x7FFF
            lay.tl0 = (lay.tl0 + 1) & 0xFF


def three_layers() -> list[Layer]:
    return [
        Layer(0, 0x1000, 100, 1_000, 32_700, 250, 1, (0, 12, 40, 60)),
        Layer(1, 0x2000, 30_000, 4_294_960_000, 5, 0, 2, (0, 15, 30, 45)),
        Layer(2, 0x3000, 65_500, 777, 1_000, 17, 3, (0, 25, 50)),
    ]


def parse_out(data: bytes) -> tuple[RtpHeader, Vp8Descriptor]:
    hdr = RtpHeader().parse(data)
    return hdr, Vp8Descriptor().parse(data, hdr.payload_start, hdr.payload_end)


def run_simulcast(dt: DownTrack, schedule: dict[int, int], frames: range) -> tuple[list[Sent], dict[int, PacketCache]]:
    src = SourcePacket(Codec.VP8)
    caches = {lay: PacketCache(1024) for lay in range(3)}
    sent: list[Sent] = []
    for frame, layer, key, arrival, data in simulcast_stream(three_layers(), frames):
        if frame in schedule and dt.target_layer != schedule[frame]:
            dt.target_layer = schedule[frame]
        src.load(data, layer, arrival)
        caches[layer].put(src.sequence, data)
        out = dt.rewrite(data, src)
        if out is not None:
            sent.append(Sent(layer, src.ssrc, src.sequence, frame, key, out, data))
    return sent, caches


def test_simulcast_switches_keep_output_continuous() -> None:
    dt = DownTrack(OUT_SSRC, Codec.VP8, 90000, {VP8_PT_IN: VP8_PT_OUT}, target_layer=0)
    assert dt.needs_keyframe and not dt.started
    # start mid-GOP (frame 1): nothing until layer 0's keyframe at frame 12
    schedule = {10: 0, 14: 2, 28: 1, 35: 0, 55: 2}
    sent, _ = run_simulcast(dt, schedule, range(1, 70))

    assert sent[0].frame == 12 and sent[0].key and sent[0].layer == 0
    # layer sequence: 0 until layer-2 key (25), 2 until layer-1 key (30), 1 until layer-0 key (40),
    # 0 until layer-2 key (50 is before the request at 55 → next is none) → stays 0
    segments: list[tuple[int, int]] = []
    for s in sent:
        if not segments or segments[-1][0] != s.layer:
            segments.append((s.layer, s.frame))
    assert segments == [(0, 12), (2, 25), (1, 30), (0, 40)]
    assert dt.layer_switches == 3 and dt.current_layer == 0
    assert dt.needs_keyframe  # layer 2 requested at 55, no keyframe since
    dt.target_layer = 0  # request withdrawn: back to the layer being forwarded
    assert not dt.needs_keyframe

    prev_hdr = prev_desc = None
    prev_layer = sent[0].layer
    for s in sent:
        hdr, desc = parse_out(s.data)
        assert hdr.ssrc == OUT_SSRC and hdr.payload_type == VP8_PT_OUT
        if prev_hdr is not None:
            assert hdr.sequence == (prev_hdr.sequence + 1) & 0xFFFF
            assert 0 <= (hdr.timestamp - prev_hdr.timestamp) & 0xFFFFFFFF < 0x80000000
            dpid = (desc.picture_id - prev_desc.picture_id) & 0x7FFF
            dtl0 = (desc.tl0picidx - prev_desc.tl0picidx) & 0xFF
            if desc.start_of_partition:
                assert dpid == 1 and dtl0 == 1  # every frame is a new picture (TID 0)
            else:
                assert dpid == 0 and dtl0 == 0
        if s.layer != prev_layer:
            # first packet after a switch: keyframe start of the new layer
            assert s.key and desc.keyframe
            # frame interval of 1/30 s → +3000 ticks
            assert (hdr.timestamp - prev_hdr.timestamp) & 0xFFFFFFFF in (1, 3000)
            prev_layer = s.layer
        # payload after the descriptor is untouched
        assert s.data[hdr.payload_start + desc.size :] == s.src[12 + desc.size :]
        assert s.data[12 : hdr.payload_start + 2] == s.src[12 : hdr.payload_start + 2]  # X/I/L/T bits kept
        prev_hdr, prev_desc = hdr, desc
    assert dt.packets_sent == len(sent)
    assert dt.bytes_sent == sum(len(s.data) for s in sent)


def test_switch_timestamp_delta_from_wall_clock() -> None:
    dt = DownTrack(OUT_SSRC, Codec.VP8, 90000, {VP8_PT_IN: VP8_PT_OUT})
    src = SourcePacket(Codec.VP8)
    a = rtp(10, 5000, 1, vp8_payload(3, 0, start=True, key=True, body=b"a"))
    b = rtp(900, 123456, 2, vp8_payload(7000, 9, start=True, key=True, body=b"b"))
    out_a = dt.rewrite(a, src.load(a, 0, 100.0))
    dt.target_layer = 1
    assert dt.rewrite(b, src.load(b, 0, 100.1)) is None  # layer 0 packet of another ssrc: not target
    out_b = dt.rewrite(b, src.load(b, 1, 100.25))
    assert out_a is not None and out_b is not None
    ha, _ = parse_out(out_a)
    hb, db = parse_out(out_b)
    assert (ha.sequence, ha.timestamp) == (10, 5000)  # first epoch passes numbering through
    assert hb.sequence == 11
    assert hb.timestamp == 5000 + 22500  # 0.25 s at 90 kHz
    assert (db.picture_id, db.tl0picidx) == (4, 1)
    assert out_b[hb.payload_start + db.size :] == b[12 + db.size :]


def test_extension_rewrite_and_vp8_munging_with_shifted_payload() -> None:
    pub = {URI_MID: 4, URI_RID: 10, URI_ABS_SEND_TIME: 2, URI_TWCC: 3}
    sub = {URI_MID: 1, URI_TWCC: 5}
    rw = ExtensionRewriter(pub, sub, mid="video-track-12")  # longer MID → rebuilt, payload moves
    dt = DownTrack(OUT_SSRC, Codec.VP8, 90000, {VP8_PT_IN: VP8_PT_OUT}, rw)
    src = SourcePacket(Codec.VP8)

    def pkt(seq: int, ssrc: int, rid: bytes, pid: int, key: bool) -> bytes:
        ext = [(4, b"0"), (10, rid), (2, b"\x00\x00\x01"), (3, seq.to_bytes(2, "big"))]
        return rtp(seq, seq * 3000, ssrc, vp8_payload(pid, pid & 0xFF, start=True, key=key, body=b"xyz"), ext=ext)

    first = dt.rewrite(p := pkt(1, 0xA, b"q", 100, True), src.load(p, 0, 1.0))
    assert first is not None
    dt.target_layer = 1
    second = dt.rewrite(p := pkt(50, 0xB, b"h", 2000, True), src.load(p, 1, 1.1))
    assert second is not None
    for out, twcc in ((first, 1), (second, 50)):
        hdr, desc = parse_out(out)
        assert hdr.get_extension(out, 1) == b"video-track-12"
        assert hdr.payload_start == 12 + 4 + 20
        assert hdr.get_extension(out, 5) == twcc.to_bytes(2, "big")
        assert hdr.get_extension(out, 10) is None and hdr.get_extension(out, 2) is None
        assert out[hdr.payload_start + desc.size + 10 :] == b"xyz"
    h1, d1 = parse_out(first)
    h2, d2 = parse_out(second)
    assert h2.sequence == (h1.sequence + 1) & 0xFFFF
    assert d2.picture_id == d1.picture_id + 1 and d2.tl0picidx == d1.tl0picidx + 1


def test_nack_translation_and_retransmission_across_switches() -> None:
    dt = DownTrack(OUT_SSRC, Codec.VP8, 90000, {VP8_PT_IN: VP8_PT_OUT})
    sent, caches = run_simulcast(dt, {14: 2, 28: 1, 35: 0}, range(0, 45))
    assert dt.layer_switches == 3
    last = dt.last_sequence
    for s in sent[-400:]:
        out_seq = RtpHeader().parse(s.data).sequence
        target = dt.translate_nack(out_seq)
        assert target == NackTarget(s.layer, s.src_ssrc, s.src_seq)
        cached = caches[target.layer].get(target.sequence)
        assert cached is not None
        assert dt.rewrite_retransmission(cached, out_seq) == s.data
    assert dt.retransmissions == min(400, len(sent))
    assert dt.translate_nack((last + 1) & 0xFFFF) is None  # not sent yet
    assert dt.translate_nack((last + 1000) & 0xFFFF) is None
    assert dt.translate_nacks([last, (last + 5) & 0xFFFF]) == [dt.translate_nack(last)]
    # wrong cached packet for that sequence → refused
    s = sent[-1]
    out_seq = RtpHeader().parse(s.data).sequence
    assert dt.rewrite_retransmission(sent[-2].data, out_seq) is None


def test_nack_ring_forgets_old_epochs() -> None:
    dt = DownTrack(OUT_SSRC, Codec.OPUS, 48000, {OPUS_PT_IN: OPUS_PT_OUT}, max_epochs=2)
    src = SourcePacket(Codec.OPUS)
    outs = []
    for epoch in range(4):  # four publisher restarts
        for i in range(3):
            p = rtp(1000 * epoch + i, 960 * i, 0x100 + epoch, b"op", pt=OPUS_PT_IN)
            outs.append(dt.rewrite(p, src.load(p, 0, epoch + i * 0.02)))
    seqs = [RtpHeader().parse(o).sequence for o in outs]
    assert seqs == list(range(seqs[0], seqs[0] + 12))
    assert dt.translate_nack(seqs[0]) is None  # epoch 0 forgotten
    assert dt.translate_nack(seqs[3]) is None
    assert dt.translate_nack(seqs[6]) == NackTarget(0, 0x102, 2000)
    assert dt.translate_nack(seqs[11]) == NackTarget(0, 0x103, 3002)


def test_audio_publisher_restart_and_reordering() -> None:
    dt = DownTrack(OUT_SSRC, Codec.OPUS, 48000, {OPUS_PT_IN: OPUS_PT_OUT})
    assert not dt.needs_keyframe
    src = SourcePacket(Codec.OPUS)

    def send(seq: int, ts: int, ssrc: int, t: float) -> tuple[int, int] | None:
        p = rtp(seq, ts, ssrc, b"opus", pt=OPUS_PT_IN, marker=True)
        out = dt.rewrite(p, src.load(p, 0, t))
        if out is None:
            return None
        h = RtpHeader().parse(out)
        assert h.ssrc == OUT_SSRC and h.payload_type == OPUS_PT_OUT and h.marker
        assert out[12:] == b"opus"
        return h.sequence, h.timestamp

    assert send(65534, 100, 7, 0.0) == (65534, 100)  # starts immediately
    assert send(0, 100 + 2 * 960, 7, 0.04) == (0, 2020)  # 65535 lost in between
    assert send(65535, 100 + 960, 7, 0.045) == (65535, 1060)  # late: fills the gap
    assert dt.last_sequence == 0
    assert send(65530, 0, 7, 0.05) is None  # older than the epoch start
    # publisher restarts with a new SSRC and random bases, 1 s later
    assert send(4242, 999_999, 8, 1.04) == (1, 2020 + 48000)
    assert send(4243, 999_999 + 960, 8, 1.06) == (2, 2020 + 48000 + 960)
    assert send(1, 100 + 3 * 960, 7, 1.07) is None  # old source now ignored
    assert dt.layer_switches == 1
    assert dt.packets_dropped == 2


def test_video_waits_for_keyframe_and_flags_it() -> None:
    dt = DownTrack(OUT_SSRC, Codec.VP8, 90000, {VP8_PT_IN: VP8_PT_OUT})
    src = SourcePacket(Codec.VP8)
    delta = rtp(1, 0, 5, vp8_payload(1, 0, start=True, key=False, body=b"d"))
    padding_only = rtp(2, 0, 5, b"")
    key = rtp(3, 3000, 5, vp8_payload(2, 1, start=True, key=True, body=b"k"))
    assert dt.rewrite(delta, src.load(delta, 0, 0.0)) is None
    assert dt.rewrite(padding_only, src.load(padding_only, 0, 0.0)) is None
    assert dt.needs_keyframe and not dt.started
    assert dt.rewrite(key, src.load(key, 0, 0.0)) is not None
    assert dt.started and not dt.needs_keyframe and dt.source_ssrc == 5
    # convenience path without a shared SourcePacket parses itself (layer 0)
    nxt = rtp(4, 6000, 5, vp8_payload(3, 2, start=True, key=False, body=b"n"))
    out = dt.rewrite(nxt)
    assert out is not None and RtpHeader().parse(out).sequence == 4
    assert dt.packets_dropped == 2


def test_h264_keyframe_start() -> None:
    dt = DownTrack(OUT_SSRC, Codec.H264, 90000, {102: 102})
    src = SourcePacket(Codec.H264)
    non_idr = rtp(1, 0, 9, b"\x41\x9a\x00", pt=102)
    fu_idr_start = rtp(2, 0, 9, b"\x7c\x85\x88\x80", pt=102)
    assert dt.rewrite(non_idr, src.load(non_idr)) is None
    assert dt.rewrite(fu_idr_start, src.load(fu_idr_start)) is not None


def test_payload_type_mapping_and_counters() -> None:
    dt = DownTrack(OUT_SSRC, Codec.OPUS, 48000, {OPUS_PT_IN: OPUS_PT_OUT})
    ok = rtp(1, 0, 3, b"12345", pt=OPUS_PT_IN)
    other = rtp(2, 960, 3, b"12345", pt=63)
    assert dt.rewrite(ok) is not None
    assert dt.rewrite(other) is None
    assert (dt.packets_sent, dt.packets_dropped, dt.bytes_sent, dt.payload_bytes_sent) == (1, 1, 17, 5)
    with pytest.raises(ValueError):
        DownTrack(1, Codec.OPUS, 48000, {200: 1})
    with pytest.raises(ValueError):
        DownTrack(1 << 32, Codec.OPUS, 48000, {})


def test_pause_and_resume() -> None:
    dt = DownTrack(OUT_SSRC, Codec.VP8, 90000, {VP8_PT_IN: VP8_PT_OUT})
    src = SourcePacket(Codec.VP8)
    seq = 0
    outs = []

    def feed(key: bool, t: float) -> bytes | None:
        nonlocal seq
        seq += 1
        p = rtp(seq, seq * 3000, 5, vp8_payload(seq, seq & 0xFF, start=True, key=key, body=b"v"))
        return dt.rewrite(p, src.load(p, 0, t))

    outs.append(feed(True, 0.0))
    outs.append(feed(False, 0.033))
    dt.paused = True
    assert not dt.needs_keyframe
    assert feed(True, 0.066) is None
    assert feed(False, 0.1) is None
    dt.paused = False
    assert dt.needs_keyframe
    assert feed(False, 0.133) is None  # resume waits for a keyframe
    outs.append(feed(True, 0.5))
    hs = [parse_out(o) for o in outs if o is not None]
    assert [h.sequence for h, _ in hs] == [1, 2, 3]
    assert hs[2][0].timestamp == hs[1][0].timestamp + round(0.467 * 90000)
    assert [d.picture_id for _, d in hs] == [1, 2, 3]


def test_sender_report_translation() -> None:
    dt = DownTrack(OUT_SSRC, Codec.VP8, 90000, {VP8_PT_IN: VP8_PT_OUT})
    sent, _ = run_simulcast(dt, {14: 2}, range(0, 30))
    last = sent[-1]
    assert last.layer == 2
    out_ts = RtpHeader().parse(last.data).timestamp
    # a publisher SR of layer 2 whose RTP time is that of the same (last) frame
    layer2_input_ts = RtpHeader().parse(last.src).timestamp
    assert layer2_input_ts == 777 + 29 * 3000
    ntp = rtcp.ntp_from_seconds(1_700_000_000.0)
    assert dt.translate_sender_report(0x3000, ntp, layer2_input_ts) == (ntp, out_ts)
    assert dt.translate_sender_report(0x1000, ntp, 5) is None  # not the forwarded layer
    sr = rtcp.parse_sr(dt.build_sender_report(0x3000, ntp, layer2_input_ts) or b"")
    assert (sr.ssrc, sr.ntp, sr.rtp_timestamp, sr.packet_count) == (OUT_SSRC, ntp, out_ts, dt.packets_sent)
    assert sr.octet_count == dt.payload_bytes_sent
    assert dt.build_sender_report(0x2000, ntp, 1) is None
