"""Relay load inside a lab DC: stand-in media nodes (real UDP on the local relay wire, real NATS
answers) publishing or subscribing many audio-sized streams. Run inside a DC namespace:

    python lab_relay_load.py publish NATS_URL DC NODE --duration S [--pps 50]
    python lab_relay_load.py subscribe NATS_URL DC ORIGIN_DC ORIGIN_NODE --tracks N --duration S --out FILE

The subscriber writes, per stream, its packet count and every silence longer than 100 ms as
[start, end] in `time.monotonic()` seconds (one clock for every process of the machine)."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shared.bus import Bus
from shared.relay_wire import stream_id
from tests.support.relay_mesh import StandInPublisher, StandInSubscriber

SILENCE = 0.1


def track_names(count: int) -> list[str]:
    return [f"TR_load_{index:04d}" for index in range(count)]


async def publish(args: argparse.Namespace) -> None:
    bus = await Bus.connect(args.nats, name=f"load-pub-{args.node}", dc=args.dc, node=args.node)
    publisher = await StandInPublisher(bus, args.node, payload_size=80).start(pps=args.pps)
    print(json.dumps({"ready": time.monotonic()}), flush=True)
    try:
        await asyncio.sleep(args.duration)
    finally:
        await publisher.stop()
        await bus.close()
    print(json.dumps({"sent": publisher.sent}), flush=True)


async def subscribe(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    bus = await Bus.connect(args.nats, name="load-sub", dc=args.dc, node="load-sub")
    subscriber = StandInSubscriber(bus, args.dc, "load-sub")
    tracks = track_names(args.tracks)
    subscriber.start(tracks, args.origin_dc, args.origin_node)
    try:
        await asyncio.sleep(args.duration)
    finally:
        await subscriber.stop()
        await bus.close()
    report: dict[str, dict[str, object]] = {}
    for track in tracks:
        times = subscriber.arrivals.get(stream_id(track), [])
        silences = [[a, b] for a, b in itertools.pairwise(times) if b - a > SILENCE]
        report[track] = {"count": len(times), "first": times[0] if times else None,
                         "last": times[-1] if times else None, "silences": silences}
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    pub = sub.add_parser("publish")
    pub.add_argument("nats")
    pub.add_argument("dc")
    pub.add_argument("node")
    pub.add_argument("--duration", type=float, default=30)
    pub.add_argument("--pps", type=float, default=50)
    rec = sub.add_parser("subscribe")
    rec.add_argument("nats")
    rec.add_argument("dc")
    rec.add_argument("origin_dc")
    rec.add_argument("origin_node")
    rec.add_argument("--tracks", type=int, default=200)
    rec.add_argument("--duration", type=float, default=30)
    rec.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.mode == "publish":
        asyncio.run(publish(args))
    else:
        Path(args.out).write_text(json.dumps(asyncio.run(subscribe(args))))


if __name__ == "__main__":
    main()
