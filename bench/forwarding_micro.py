"""Micro-benchmark of the RTP forwarding inner loop (services/media/rtp).

Measures, in µs per call on pre-built plaintext packets (no SRTP, no sockets):

* ``SourcePacket.load``: the once-per-input-packet parse (header, VP8 descriptor, keyframe);
* ``DownTrack.rewrite`` for a ~1200-byte VP8 packet carrying libwebrtc-style extensions
  (mid, rid, abs-send-time, transport-cc), in several configurations;
* fan-out: one ``load`` plus N ``rewrite`` calls per input packet;
* the whole per-copy send, side by side, CPU time (``time.process_time``, so other processes on a
  busy machine do not count): rewrite + SRTP protect (AES-256-GCM, aiortc's profile) + ``sendto``
  on a real UDP socket to N receiving sockets on loopback, done the way the media node did it
  before (``DownTrack.rewrite`` -> bytes, one ``ExtensionRewriter`` per subscriber,
  ``pylibsrtp.Session.protect``) and the way it does now (``DownTrack.write_into`` the shared
  scratch buffer, one rewriter shared by subscribers with the same ids and MID, libsrtp's
  ``srtp_protect`` in place, ``sendto`` of a view). Rounds alternate between the two.

Run: ``.venv/bin/python bench/forwarding_micro.py [--packets 4096] [--rounds 7] [--fanout 50]``
Each figure is the best round (minimum), with the median in parentheses.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pylibsrtp

from services.media.rtp.codecs import Codec
from services.media.rtp.extensions import (
    URI_ABS_SEND_TIME,
    URI_MID,
    URI_RID,
    URI_TWCC,
    ExtensionRewriter,
    build_extension_block,
)
from services.media.rtp.forwarder import DownTrack, SourcePacket
from services.media.webrtc import srtp

PUB_IDS = {URI_MID: 4, URI_RID: 10, URI_ABS_SEND_TIME: 2, URI_TWCC: 3}
SUB_IDS_SAME = dict(PUB_IDS)
SUB_IDS_AIORTC = {URI_MID: 1, URI_ABS_SEND_TIME: 3, URI_TWCC: 5}
VP8_PT = 96
OPUS_PT = 111


def vp8_packets(count: int, *, ssrc: int = 0x1234, seq0: int = 1000, with_rid: bool = True, size: int = 1200):
    """``count`` consecutive VP8 packets (keyframe first), each ``size`` bytes."""
    out = []
    pid = 100
    ts = 90000
    for i in range(count):
        start = i % 4 == 0
        key = i == 0
        if start and i:
            pid = (pid + 1) & 0x7FFF
            ts += 3000
        desc = bytes([0x90 if start else 0x80, 0xE0, 0x80 | (pid >> 8), pid & 0xFF, pid & 0xFF, 0x00])
        vp8_hdr = (b"\x10\x02\x00\x9d\x01\x2a\x80\x02\x68\x01" if key else b"\x11\x02\x00") if start else b""
        ext = [(4, b"0")]
        if with_rid:
            ext.append((10, b"f"))
        ext += [(2, (i * 77).to_bytes(3, "big")), (3, ((seq0 + i) & 0xFFFF).to_bytes(2, "big"))]
        head = struct.pack("!BBHII", 0x90, (0x80 if i % 4 == 3 else 0) | VP8_PT, (seq0 + i) & 0xFFFF, ts, ssrc)
        head += build_extension_block(ext)
        body = desc + vp8_hdr
        out.append(head + body + bytes(size - len(head) - len(body)))
    return out


def opus_packets(count: int):
    out = []
    for i in range(count):
        head = struct.pack("!BBHII", 0x90, OPUS_PT, i, i * 960, 0x4321)
        head += build_extension_block([(1, b"\x85"), (4, b"0")])
        out.append(head + bytes(90))
    return out


def timed(run_round: Callable[[], int], rounds: int) -> tuple[float, float]:
    """Run ``run_round`` (returns number of operations) ``rounds`` times; (best, median) µs/op."""
    results = []
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter_ns()
            ops = run_round()
            elapsed = time.perf_counter_ns() - t0
        finally:
            gc.enable()
        results.append(elapsed / ops / 1000)
    return min(results), statistics.median(results)


def bench_load(packets: list[bytes], rounds: int) -> tuple[float, float]:
    src = SourcePacket(Codec.VP8)
    load = src.load

    def run() -> int:
        for p in packets:
            load(p, 0, 0.0)
        return len(packets)

    return timed(run, rounds)


def make_downtrack(kind: str) -> DownTrack:
    if kind == "none":
        return DownTrack(0xABCD, Codec.VP8, 90000, {VP8_PT: 120})
    if kind == "identity":
        rw = ExtensionRewriter({URI_ABS_SEND_TIME: 2, URI_TWCC: 3}, {URI_ABS_SEND_TIME: 2, URI_TWCC: 3})
        return DownTrack(0xABCD, Codec.VP8, 90000, {VP8_PT: 120}, rw)
    if kind == "inplace":
        rw = ExtensionRewriter(PUB_IDS, SUB_IDS_AIORTC, mid="7")
        return DownTrack(0xABCD, Codec.VP8, 90000, {VP8_PT: 120}, rw)
    if kind == "rebuild":
        rw = ExtensionRewriter(PUB_IDS, SUB_IDS_AIORTC, mid="video1")
        return DownTrack(0xABCD, Codec.VP8, 90000, {VP8_PT: 120}, rw)
    raise ValueError(kind)


def bench_baseline(packets: list[bytes], rounds: int) -> tuple[float, float]:
    """The floor for any rewrite: copy into a bytearray, pack 12 header bytes, copy to bytes."""
    pack_into = struct.Struct("!BBHII").pack_into

    def run() -> int:
        for p in packets:
            buf = bytearray(p)
            pack_into(buf, 0, 0x90, 120, 1, 2, 3)
            bytes(buf)
        return len(packets)

    return timed(run, rounds)


def bench_rewrite(packets: list[bytes], kind: str, rounds: int, *, switched: bool = False) -> tuple[float, float]:
    # Pre-parse with one SourcePacket per packet so that only rewrite() is timed.
    loaded = [(p, SourcePacket(Codec.VP8).load(p, 0, 0.0)) for p in packets]
    other = vp8_packets(1, ssrc=0x9999, seq0=40000)[0]

    def run() -> int:
        dt = make_downtrack(kind)
        if switched:
            # forward a keyframe of another source first, so VP8 munging offsets are non-zero
            dt.rewrite(other, SourcePacket(Codec.VP8).load(other, 0, 0.0))
        rewrite = dt.rewrite
        for p, sp in loaded:
            rewrite(p, sp)
        return len(loaded)

    return timed(run, rounds)


def bench_opus(rounds: int) -> tuple[float, float]:
    packets = opus_packets(4096)
    loaded = [(p, SourcePacket(Codec.OPUS).load(p, 0, 0.0)) for p in packets]

    def run() -> int:
        dt = DownTrack(0xABCD, Codec.OPUS, 48000, {OPUS_PT: 109})
        rewrite = dt.rewrite
        for p, sp in loaded:
            rewrite(p, sp)
        return len(loaded)

    return timed(run, rounds)


def bench_fanout(packets: list[bytes], kind: str, n: int, rounds: int) -> tuple[float, float]:
    def run() -> int:
        downtracks = [make_downtrack(kind) for _ in range(n)]
        src = SourcePacket(Codec.VP8)
        load = src.load
        rewrites = [dt.rewrite for dt in downtracks]
        for p in packets:
            load(p, 0, 0.0)
            for rw in rewrites:
                rw(p, src)
        return len(packets)

    return timed(run, rounds)


def srtp_sessions(n: int) -> list[pylibsrtp.Session]:
    sessions = []
    for i in range(n):
        policy = pylibsrtp.Policy(key=bytes([i]) * 44, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                                  srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM)
        sessions.append(pylibsrtp.Session(policy))
    return sessions


def bench_send_paths(packets: list[bytes], n: int, rounds: int) -> dict[str, list[float]]:
    """CPU µs per forwarded copy for the old and the new per-copy path (see the module doc)."""
    receivers = []
    for _ in range(n):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        receivers.append(rx)
    addrs = [rx.getsockname() for rx in receivers]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)
    sendto = tx.sendto

    def drain() -> None:
        for rx in receivers:
            with contextlib.suppress(BlockingIOError):
                while True:
                    rx.recv(2048)

    def old_round() -> int:
        sessions = srtp_sessions(n)
        downs = [make_downtrack("inplace") for _ in range(n)]  # a rewriter each, as before
        legs = [(d.rewrite, s.protect, a) for d, s, a in zip(downs, sessions, addrs, strict=True)]
        src = SourcePacket(Codec.VP8)
        for p in packets:
            src.load(p, 0, 0.0)
            for rewrite, protect, addr in legs:
                out = rewrite(p, src)
                if out is not None:
                    with contextlib.suppress(BlockingIOError):
                        sendto(protect(out), addr)
        return len(packets) * n

    def new_round() -> int:
        sessions = srtp_sessions(n)
        shared = ExtensionRewriter(PUB_IDS, SUB_IDS_AIORTC, mid="7")  # what make_downtrack("inplace") builds
        downs = [DownTrack(0xABCD, Codec.VP8, 90000, {VP8_PT: 120}, shared) for _ in range(n)]
        legs = [(d.write_into, srtp.srtp_context(s), a) for d, s, a in zip(downs, sessions, addrs, strict=True)]
        src = SourcePacket(Codec.VP8)
        scratch, protect_in_place, protect = srtp.SCRATCH, srtp.protect_in_place, srtp.PROTECT_RTP
        for p in packets:
            src.load(p, 0, 0.0)
            for write_into, context, addr in legs:
                length = write_into(scratch, p, src)
                if length:
                    size = protect_in_place(protect, context, length)
                    with contextlib.suppress(BlockingIOError):
                        sendto(scratch[:size], addr)
        return len(packets) * n

    results: dict[str, list[float]] = {"before": [], "now": []}
    try:
        for _ in range(rounds):
            for name, run in (("before", old_round), ("now", new_round)):
                drain()
                gc.collect()
                t0 = time.process_time_ns()
                copies = run()
                results[name].append((time.process_time_ns() - t0) / 1000 / copies)
    finally:
        for sock in (*receivers, tx):
            sock.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--fanout", type=int, default=50)
    args = ap.parse_args()
    packets = vp8_packets(args.packets)
    r = args.rounds

    print(f"python {sys.version.split()[0]}, {args.packets} packets x {r} rounds, VP8 {len(packets[0])} B")
    print("µs per call: best (median)\n")

    rows = [
        ("baseline: bytearray copy + pack_into + bytes()", bench_baseline(packets, r)),
        ("SourcePacket.load (VP8 parse, once per input packet)", bench_load(packets, r)),
        ("rewrite VP8, no extension rewriter", bench_rewrite(packets, "none", r)),
        ("rewrite VP8, identity mapping (passthrough fast path)", bench_rewrite(packets, "identity", r)),
        ("rewrite VP8, ext rewrite in place (ids, MID, drop RID)", bench_rewrite(packets, "inplace", r)),
        ("rewrite VP8, ext rebuild (MID length differs)", bench_rewrite(packets, "rebuild", r)),
        ("rewrite VP8, ext in place + picture-id munging", bench_rewrite(packets, "inplace", r, switched=True)),
        ("rewrite Opus 110 B, no extension rewriter", bench_opus(r)),
    ]
    width = max(len(name) for name, _ in rows)
    for name, (best, med) in rows:
        print(f"  {name:<{width}}  {best:6.2f}  ({med:.2f})")

    n = args.fanout
    print(f"\nfan-out: 1 load + {n} rewrites per input packet")
    for kind, label in (("none", "no extension rewriter"), ("inplace", "ext rewrite in place")):
        best, med = bench_fanout(packets[: max(256, args.packets // 8)], kind, n, r)
        print(f"  {label:<24} {best:8.1f} µs per input packet ({med:.1f}), {best / n:5.2f} µs per copy ({med / n:.2f})")

    print(f"\nper copy, rewrite + SRTP + sendto to {n} loopback sockets, CPU µs (rounds alternate):")
    paths = bench_send_paths(packets[: max(256, args.packets // 8)], n, r)
    for name, label in (("before", "before: rewrite() bytes, rewriter each, Session.protect"),
                        ("now", "now: write_into scratch, shared rewriter, srtp_protect in place")):
        values = paths[name]
        print(f"  {label:<64} {min(values):6.2f}  ({statistics.median(values):.2f})")
    ratio = statistics.median(paths["now"]) / statistics.median(paths["before"])
    print(f"  now / before (medians): {ratio:.2f}x")


if __name__ == "__main__":
    main()
