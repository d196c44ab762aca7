"""ICMP echo (ping) from inside a namespace, without the `ping` binary (not on every machine).

`python -m meshrtc.lab.probe IP [--count N] [--interval S] [--timeout S]` prints one JSON line:
`{"target": …, "sent": N, "received": M, "rtts_ms": [...], "error": null}`. `meshrtc lab ping`
runs it inside a DC namespace with `ip netns exec`. Needs root (a raw socket).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0


@dataclass
class PingResult:
    target: str
    sent: int = 0
    received: int = 0
    rtts_ms: list[float] = field(default_factory=list)
    error: str | None = None  # e.g. "Network is unreachable": no route at all (a cut link)

    @property
    def loss_percent(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 100.0


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, checksum(header + payload), ident, seq) + payload


def parse_echo_reply(packet: bytes, ident: int) -> int | None:
    """The sequence number of our echo reply in a raw IPv4 packet, or None if it is something else."""
    if len(packet) < 20:
        return None
    header_len = (packet[0] & 0x0F) * 4
    icmp = packet[header_len:header_len + 8]
    if len(icmp) < 8:
        return None
    kind, _, _, reply_ident, seq = struct.unpack("!BBHHH", icmp)
    if kind != ICMP_ECHO_REPLY or reply_ident != ident:
        return None
    return seq


def ping(target: str, count: int = 5, interval: float = 0.2, timeout: float = 2.0) -> PingResult:
    result = PingResult(target)
    ident = os.getpid() & 0xFFFF
    sent_at: dict[int, float] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        next_send = time.monotonic()
        last_deadline = next_send
        seq = 0
        while True:
            now = time.monotonic()
            if seq < count and now >= next_send:
                seq += 1
                try:
                    sock.sendto(echo_request(ident, seq, struct.pack("!d", now)), (target, 0))
                except OSError as exc:
                    result.error = exc.strerror or str(exc)
                    result.sent = seq
                    return result
                sent_at[seq] = now
                result.sent = seq
                next_send = now + interval
                last_deadline = now + timeout
            if seq >= count and (now >= last_deadline or result.received == count):
                return result
            wait = max(0.0, min(next_send if seq < count else last_deadline, last_deadline) - now)
            readable, _, _ = select.select([sock], [], [], wait)
            if readable:
                packet, _ = sock.recvfrom(65536)
                got = parse_echo_reply(packet, ident)
                if got is not None and got in sent_at:
                    result.rtts_ms.append((time.monotonic() - sent_at.pop(got)) * 1000)
                    result.received += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshrtc.lab.probe")
    parser.add_argument("target")
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    result = ping(args.target, args.count, args.interval, args.timeout)
    print(json.dumps(asdict(result)), flush=True)
    return 0 if result.received else 1


if __name__ == "__main__":
    sys.exit(main())
