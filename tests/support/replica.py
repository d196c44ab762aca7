"""Reading REPLICA_<DC> streams back, for the replication tests and bench/replication.py."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from shared.bus import Bus
from shared.events import Envelope
from shared.replication import replica_stream


async def read_ids(bus: Bus, stream: str) -> list[str]:
    """Every event id in `stream`, in stream order (an ephemeral, unacked consumer)."""
    sub = await bus.js.pull_subscribe("", stream=stream, config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0))
    ids: list[str] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(500, timeout=1.0)
            except TimeoutError:
                break
            ids += [Envelope.from_json(m.data).id for m in msgs]
            if msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return ids


async def replica_count(bus: Bus) -> int:
    return (await bus.js.stream_info(replica_stream(bus.dc))).state.messages


async def wait_for_counts(buses: Mapping[str, Bus], expected: int, within: float) -> dict[str, float]:
    """Seconds until each DC's replica held `expected` events (AssertionError after `within`)."""
    started = time.monotonic()
    reached: dict[str, float] = {}
    while True:
        for dc, bus in buses.items():
            if dc not in reached and await replica_count(bus) >= expected:
                reached[dc] = time.monotonic() - started
        if len(reached) == len(buses):
            return reached
        if time.monotonic() - started > within:
            counts = {dc: await replica_count(bus) for dc, bus in buses.items()}
            raise AssertionError(f"replicas hold {counts} events after {within}s, expected {expected} each")
        await asyncio.sleep(0.1)


async def replication_problems(buses: Mapping[str, Bus], published: list[str]) -> list[str]:
    """What is doubled, missing or unexpected in each DC's replica (empty: exactly once)."""
    problems = []
    for dc, bus in buses.items():
        ids = await read_ids(bus, replica_stream(dc))
        doubled = [i for i, n in Counter(ids).items() if n > 1]
        missing = set(published) - set(ids)
        unexpected = set(ids) - set(published)
        if doubled or missing or unexpected:
            problems.append(f"{dc}: {len(doubled)} doubled, {len(missing)} missing, {len(unexpected)} unexpected")
    return problems
