"""CPU cost of the relay hot path (services/relay/forwarder.py), per packet, side by side.

In one process, on real loopback UDP sockets (the receivers are never read; the kernel drops
what overflows, so `sendto` cost is real): three forwarders (dc indices 0, 1, 2) with link keys.

* origin: a local RTP datagram from the publisher's node -> one sealed WAN datagram (and with two
  destination DCs, two);
* transit: a WAN datagram from dc0 -> opened, re-sealed for dc2, sent (source route 0 -> 1 -> 2);
* destination: a WAN datagram -> opened, delivered to 1 and to 10 local subscriber nodes;
* baseline: one plain `sendto` of the same payload (what any UDP forwarder in Python pays).

CPU time is `time.process_time()` around N calls of the forwarder's datagram handler (the socket
read is excluded; it is the same for every row). Each figure is the best of `--rounds` rounds,
the median in parentheses.

Run: ``.venv/bin/python bench/relay.py [--packets 20000] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.relay.crypto import LinkCipher
from services.relay.forwarder import Forwarder, StreamState, WanPlan
from services.relay.wire import HEADER, VERSION, Kind, deliver_mask, pack_route
from shared.relay_wire import LocalType, encode_local, stream_id
from tests.support.sockets import loopback_udp

STREAM = stream_id("TR_bench")



class Bench:
    def __init__(self, subscribers: int) -> None:
        keys = {frozenset((a, b)): os.urandom(32) for a in range(3) for b in range(3) if a < b}
        self.sinks = [loopback_udp() for _ in range(3 + subscribers)]
        self.nodes = []
        for i in range(3):
            peers = [j for j in range(3) if j != i]
            ciphers = {j: LinkCipher(keys[frozenset((i, j))], i, j) for j in peers}
            addrs = {j: self.sinks[j].getsockname() for j in peers}  # sends go to never-read sinks
            self.nodes.append(Forwarder(i, 3, loopback_udp(), loopback_udp(), ciphers, addrs, lambda *a: None))
        origin = StreamState(STREAM, "TR_bench", 0)
        self.nodes[0].streams[STREAM] = origin
        destination = StreamState(STREAM, "TR_bench", 0)
        destination.local_targets = tuple(s.getsockname() for s in self.sinks[3:])
        self.nodes[2].streams[STREAM] = destination
        self.sender = LinkCipher(keys[frozenset((0, 1))], 0, 1)  # dc0's side of the dc0-dc1 link
        self.sender_02 = LinkCipher(keys[frozenset((0, 2))], 0, 2)

    def set_plans(self, routes: list[tuple[int, ...]]) -> None:
        self.nodes[0].streams[STREAM].wan_plans = tuple(WanPlan(r, deliver_mask([r[-1]])) for r in routes)

    def wan_datagrams(self, cipher: LinkCipher, route: tuple[int, ...], payload: bytes, count: int) -> list[bytes]:
        out = []
        for _ in range(count):
            cipher.counter += 1
            header = HEADER.pack(VERSION, Kind.RTP, len(route), 1, 255, deliver_mask([route[-1]]), cipher.counter,
                                 STREAM, pack_route(route))
            out.append(header + cipher.seal(cipher.counter, payload, header))
        return out


def measure(run: Callable[[], None], count: int, rounds: int) -> tuple[float, float]:
    results = []
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        start = time.process_time()
        run()
        results.append((time.process_time() - start) / count * 1e6)
        gc.enable()
    return min(results), statistics.median(results)


def repeat(call: Callable[..., object], args: tuple[object, ...], n: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(n):
            call(*args)
    return run


def feed(handler: Callable[[bytes], None], batches: list[list[bytes]]) -> Callable[[], None]:
    """One pre-sealed batch per round (counters must be fresh, or the replay window drops them)."""
    remaining = iter(batches)

    def run() -> None:
        for datagram in next(remaining):
            handler(datagram)
    return run


def rows_for(size: int, n: int, rounds: int) -> list[tuple[str, int, float, float]]:
    payload = os.urandom(size)
    local = encode_local(LocalType.RTP, STREAM, 255, payload)
    bench = Bench(subscribers=10)
    baseline_sock = loopback_udp()
    rows = [("baseline: one plain sendto", size,
             *measure(repeat(baseline_sock.sendto, (payload, bench.sinks[0].getsockname()), n), n, rounds))]
    origin = bench.nodes[0].on_local
    bench.set_plans([(0, 2)])
    rows.append(("origin, 1 destination DC", size, *measure(repeat(origin, (local, ("127.0.0.1", 9)), n), n, rounds)))
    bench.set_plans([(0, 2), (0, 1)])
    rows.append(("origin, 2 destination DCs", size, *measure(repeat(origin, (local, ("127.0.0.1", 9)), n), n,
                                                              rounds)))
    batches = [bench.wan_datagrams(bench.sender, (0, 1, 2), payload, n) for _ in range(rounds)]
    rows.append(("transit (open + re-seal)", size, *measure(feed(bench.nodes[1].on_wan, batches), n, rounds)))
    nodes = list(bench.nodes)
    for subscribers in (1, 10):
        dest = Bench(subscribers=subscribers)
        batches = [dest.wan_datagrams(dest.sender_02, (0, 2), payload, n) for _ in range(rounds)]
        rows.append((f"destination, {subscribers} local subscriber(s)", size,
                     *measure(feed(dest.nodes[2].on_wan, batches), n, rounds)))
        nodes += dest.nodes
    drops = {reason: count for node in nodes for reason, count in node.drops.items()}
    if drops:
        raise SystemExit(f"the benchmark dropped datagrams, figures would be wrong: {drops}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n, rounds = args.packets, args.rounds
    rows: list[tuple[str, int, float, float]] = []
    for size in (100, 1200):
        rows += rows_for(size, n, rounds)
    base = {size: best for name, size, best, _ in rows if name.startswith("baseline")}
    print(f"relay hot path, CPU µs per packet ({n} packets x {rounds} rounds, best (median)); "
          f"python {sys.version.split()[0]}")
    print(f"{'path':38} {'payload':>8} {'µs/packet':>16} {'x sendto':>9} {'packets/s/core':>15}")
    for name, size, best, median in rows:
        print(f"{name:38} {size:>7}B {best:>7.2f} ({median:>6.2f}) {best / base[size]:>8.1f}x {1e6 / best:>15,.0f}")


if __name__ == "__main__":
    main()
