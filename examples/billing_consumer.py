"""Example billing consumer: reads `usage.rollup` events (docs/billing-events.md) from the
BILLING_<DC> stream through its own durable consumer and keeps, per rollup key, the highest
revision — the rule every consumer of these events follows.

    python examples/billing_consumer.py --nats nats://127.0.0.1:4222 --dc dc1 \
        --durable invoicing --state rollups.json [--once]

Only nats-py is needed (no meshrtc imports), so this file can be copied into a billing system.
With `--state`, what was applied survives restarts; the state file is written before the batch is
acked, so a crash between the two re-reads the batch and the revision rule makes that harmless.
`--once` stops when the stream holds nothing more (handy in scripts and tests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import nats
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

SUPPORTED_VERSION = 1


class Ledger:
    """Latest revision of every rollup, by key; totals derived from it."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.rollups: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            self.rollups = json.loads(path.read_text())

    def apply(self, envelope: dict[str, Any]) -> bool:
        """True if the event changed the ledger (new key, or a higher revision)."""
        if envelope.get("type") != "usage.rollup":
            return False
        if int(envelope.get("v", 1)) > SUPPORTED_VERSION:
            raise ValueError(f"usage.rollup v{envelope['v']} is newer than this consumer (v{SUPPORTED_VERSION})")
        rollup = envelope["payload"]
        current = self.rollups.get(rollup["key"])
        if current is not None and current["revision"] >= rollup["revision"]:
            return False  # a re-delivery or an older revision: already counted
        self.rollups[rollup["key"]] = rollup
        return True

    def save(self) -> None:
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.rollups))
            os.replace(tmp, self.path)

    def totals(self) -> dict[tuple[str, str, str], dict[str, int]]:
        """(project, room, direction) -> bytes, packets, connection_ms."""
        out: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: {"bytes": 0, "packets": 0,
                                                                               "connection_ms": 0})
        for r in self.rollups.values():
            entry = out[(r["project"], r["room"], r["direction"])]
            entry["bytes"] += r["bytes"]
            entry["packets"] += r["packets"]
            entry["connection_ms"] += r["connection_ms"]
        return dict(out)


async def consume(nats_url: str, dc: str, durable: str, ledger: Ledger, once: bool, batch: int = 256) -> int:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    stream = f"BILLING_{dc.upper().replace('-', '_')}"
    await js.add_consumer(stream, config=ConsumerConfig(
        durable_name=durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
        filter_subject=f"billing.{dc}.rollup", ack_wait=30))
    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    applied = 0
    try:
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=2)
            except (TimeoutError, NatsTimeoutError):
                if once:
                    return applied
                continue
            for msg in msgs:
                envelope = json.loads(msg.data)
                if ledger.apply(envelope):
                    applied += 1
                    r = envelope["payload"]
                    print(f"{envelope['id']} rev {r['revision']} {r['project']}/{r['room']}/{r['identity']} "
                          f"{r['direction']} minute {r['minute_start_ms']}: {r['bytes']} bytes, "
                          f"{r['connection_ms']} ms", flush=True)
            ledger.save()  # durable first ...
            for msg in msgs:
                await msg.ack()  # ... then acknowledged
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nats", default=os.environ.get("MESHRTC_NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--dc", default=os.environ.get("MESHRTC_DC", "dc1"))
    parser.add_argument("--durable", default="billing-example", help="durable consumer name (yours alone)")
    parser.add_argument("--state", type=Path, help="JSON file keeping the ledger across runs")
    parser.add_argument("--once", action="store_true", help="exit when caught up")
    args = parser.parse_args(argv)
    ledger = Ledger(args.state)
    try:
        asyncio.run(consume(args.nats, args.dc, args.durable, ledger, args.once))
    except KeyboardInterrupt:
        pass
    for (project, room, direction), t in sorted(ledger.totals().items()):
        print(f"total {project}/{room} {direction}: {t['bytes']} bytes, {t['packets']} packets, "
              f"{t['connection_ms']} connection ms", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
