"""How much traffic the lab's `wire` link emulator carries, and what it adds (root only).

Builds a 2-DC network-only lab (links by the wire emulator, 20 ms one way) and, in the same run,
sends UDP at fixed rates from dc1 (a) to dc2 over the emulated link and (b) to the root namespace
over dc1's management veth (plain kernel, the baseline). For each rate it prints delivered share,
one-way latency beyond the configured delay (p50/p99), and the wire process's CPU per frame.

    sudo .venv/bin/python bench/lab_wire.py [--rates 1000,5000,10000,20000] [--seconds 3] [--size 200]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshrtc.lab import netns, runner  # noqa: E402
from meshrtc.lab.state import StateDir  # noqa: E402

SENDER = r"""
import socket, struct, sys, time
host, port, rate, seconds, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
pad = bytes(max(0, size - 12))
start = time.monotonic(); sent = 0
while True:
    now = time.monotonic()
    if now - start >= seconds: break
    due = int((now - start) * rate)
    while sent < due:
        sent += 1
        try: sock.sendto(struct.pack("!Id", sent, time.monotonic()) + pad, (host, port))
        except OSError: pass
    time.sleep(0.0005)
print(sent)
"""

RECEIVER = r"""
import json, socket, struct, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
sock.bind((host, port)); sock.settimeout(0.5)
print("ready", flush=True)
latencies = []; deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try: data = sock.recv(65536)
    except socket.timeout: continue
    latencies.append((time.monotonic() - struct.unpack("!Id", data[:12])[1]) * 1000)
print(json.dumps(latencies))
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wire_drops(state_dir: StateDir) -> int:
    """Frames the emulator itself dropped dc1→dc2 (queue full, or the far end refused them)."""
    counters = state_dir.load_wire_stats().get("dc1-dc2", {}).get("a_to_b", {})
    return counters.get("overflowed", 0) + counters.get("undeliverable", 0)


def measure(sender_ns: str, receiver_ns: str | None, target_ip: str, rate: int, seconds: float,
            size: int, wire_pid: int | None) -> dict[str, float]:
    port = 40000 + rate % 1000
    recv_argv = [sys.executable, "-c", RECEIVER, target_ip, str(port), str(seconds + 2)]
    if receiver_ns:
        recv_argv = netns.exec_argv(receiver_ns, recv_argv)
    receiver = subprocess.Popen(recv_argv, stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    receiver.stdout.readline()
    cpu_before = cpu_seconds(wire_pid) if wire_pid else 0.0
    sent = int(subprocess.run(netns.exec_argv(sender_ns, [sys.executable, "-c", SENDER, target_ip, str(port),
                                                          str(rate), str(seconds), str(size)]),
                              capture_output=True, text=True, check=True).stdout)
    latencies = json.loads(receiver.communicate()[0].strip().splitlines()[-1])
    cpu = (cpu_seconds(wire_pid) - cpu_before) if wire_pid else 0.0
    latencies.sort()
    return {
        "sent": sent, "delivered": len(latencies) / max(1, sent),
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p99": latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan"),
        "cpu_us_per_frame": cpu * 1e6 / max(1, len(latencies)),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="1000,5000,10000,20000")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=200, help="UDP payload bytes (200 ≈ an Opus packet)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    netns.require_root_and_ip()
    state_dir = StateDir(Path(tempfile.mkdtemp(prefix="meshrtc-bench-lab-")))
    plan, state = runner.up(state_dir, 2, name=f"bench{os.getpid()}", slot=None, delays_ms={("dc1", "dc2"): 20},
                            emulator="wire", services=False, say=lambda _: None)
    rows = []
    try:
        for rate in (int(r) for r in args.rates.split(",")):
            before = wire_drops(state_dir)
            wire = measure(plan.namespace("dc1"), plan.namespace("dc2"), plan.link("dc1", "dc2").b.ip, rate,
                           args.seconds, args.size, state.wire_pid)
            time.sleep(1.2)  # the emulator writes its counters every second
            wire["emulator_dropped"] = (wire_drops(state_dir) - before) / max(1, wire["sent"])
            wire["p50"] -= 20  # what the emulator adds beyond the configured delay
            wire["p99"] -= 20
            kernel = measure(plan.namespace("dc1"), None, plan.mgmt("dc1").root.ip, rate, args.seconds, args.size,
                             None)
            rows.append({"rate": rate, "wire": wire, "veth": kernel})
    finally:
        runner.down(state_dir, plan)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"UDP {args.size} B for {args.seconds:g} s per rate; wire link 20 ms one way (added = beyond 20 ms); "
          f"load avg {os.getloadavg()[0]:.1f}")
    header = ["pkt/s", "wire: delivered", "dropped by emulator", "added p50", "added p99", "CPU/frame",
              "veth: delivered", "p50", "p99", "p99 wire/veth"]
    print(" | ".join(header))
    for row in rows:
        wire, veth = row["wire"], row["veth"]
        cells = [
            f"{row['rate']}", f"{wire['delivered']:.1%}", f"{wire['emulator_dropped']:.1%}",
            f"{wire['p50']:.2f} ms", f"{wire['p99']:.2f} ms", f"{wire['cpu_us_per_frame']:.1f} µs",
            f"{veth['delivered']:.1%}", f"{veth['p50']:.2f} ms", f"{veth['p99']:.2f} ms",
            f"{(wire['p99'] + 0.001) / (veth['p99'] + 0.001):.1f}",
        ]
        print(" | ".join(cell.rjust(len(title)) for cell, title in zip(cells, header, strict=True)))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    sys.exit(main())
