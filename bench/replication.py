"""Cross-DC catch-up after a partition heals: with the SourceKicker and without, in one run.

    .venv/bin/python bench/replication.py [--hold 20] [--rate 30] [--runs 1]

Each run starts 3 DCs on loopback (own nats-server and JetStream domain each, dc2 and dc3
joined to the hub dc1 by leafnodes through a proxy, tests/support/mesh.py), creates EVENTS_<DC>
and REPLICA_<DC>, has every DC publish --rate events/s, blackholes dc2's link for --hold s, heals
it and measures, per DC, the time from the heal until its replica holds every event; then checks
every replica holds every id exactly once. Mode "kick" runs shared.replication.SourceKicker in
every DC (as the room service does); mode "server" leaves resuming to the server's own retries.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.bus import Bus  # noqa: E402
from shared.events import Envelope, RoomMetadataUpdated  # noqa: E402
from shared.replication import SourceKicker  # noqa: E402
from tests.support.mesh import run_mesh  # noqa: E402
from tests.support.replica import replication_problems, wait_for_counts  # noqa: E402

DCS = ["dc1", "dc2", "dc3"]


async def one_run(kick: bool, hold: float, rate: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="meshrtc-bench-repl-") as tmp:
        async with run_mesh(Path(tmp), DCS) as mesh:
            await asyncio.sleep(1.0)
            buses = {dc: await Bus.connect(mesh[dc].url, name="bench", dc=dc, node=f"n-{dc}", connect_timeout=5)
                     for dc in DCS}
            kickers: list[SourceKicker] = []
            try:
                for bus in buses.values():
                    await bus.ensure_streams(datacenters=DCS)
                if kick:
                    kickers = [SourceKicker(bus.nc, bus.js, dc, DCS).start() for dc, bus in buses.items()]
                published: list[str] = []
                stop = asyncio.Event()

                async def publish(dc: str, bus: Bus) -> None:
                    n = 0
                    while not stop.is_set():
                        env = Envelope.new(RoomMetadataUpdated(sid="RM_b", metadata=str(n)), dc=dc, node="b",
                                           room=f"r{n % 5}")
                        await bus.publish_event(env, timeout=5)
                        published.append(env.id)
                        n += 1
                        await asyncio.sleep(1 / rate)

                tasks = [asyncio.create_task(publish(dc, bus)) for dc, bus in buses.items()]
                await asyncio.sleep(2)
                mesh.cut("dc2")
                await asyncio.sleep(hold)
                stop.set()
                await asyncio.gather(*tasks)
                mesh.heal("dc2")
                catch_up = await wait_for_counts(buses, len(published), within=240)
                await asyncio.sleep(1)
                problems = await replication_problems(buses, published)
                if problems:
                    raise SystemExit(f"not exactly once: {problems}")
                kicks = sum(k.stats.kicks for k in kickers)
                print(f"  {'kick' if kick else 'server':6} {len(published):5} events  catch-up "
                      + "  ".join(f"{dc} {s:6.2f}s" for dc, s in catch_up.items()) + f"  kicks {kicks}  exactly once",
                      flush=True)
                return catch_up
            finally:
                for kicker in kickers:
                    await kicker.stop()
                for bus in buses.values():
                    await bus.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hold", type=float, default=20.0, help="seconds dc2 stays cut off")
    parser.add_argument("--rate", type=float, default=30.0, help="events/s each DC publishes")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    started = time.monotonic()
    results: dict[str, list[float]] = {"kick": [], "server": []}
    for _ in range(args.runs):
        for mode in ("kick", "server"):
            catch_up = await one_run(mode == "kick", args.hold, args.rate)
            results[mode].append(max(catch_up.values()))
    kick, server = statistics.median(results["kick"]), statistics.median(results["server"])
    print(f"\ncut dc2 for {args.hold:.0f}s, {args.rate:.0f} events/s per DC, {args.runs} run(s) each, "
          f"{time.monotonic() - started:.0f}s in all")
    print(f"{'mode':8} {'slowest DC catch-up (median)':>30} {'runs':>24}")
    for mode, values in results.items():
        print(f"{mode:8} {statistics.median(values):29.2f}s {' '.join(f'{v:.2f}' for v in values):>24}")
    print(f"ratio server/kick: {server / kick:.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
