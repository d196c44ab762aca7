"""Cross-DC replication (shared.replication) with three real nats-servers on loopback: one
JetStream domain per DC, spokes joined to the hub by leafnodes through a proxy that can
blackhole a spoke's link (tests/support)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from shared.bus import Bus
from shared.events import Envelope, RoomMetadataUpdated
from shared.replication import SourceKicker, replica_stream
from tests.support.mesh import Mesh, run_mesh
from tests.support.replica import read_ids, replica_count, replication_problems, wait_for_counts

DCS = ["dc1", "dc2", "dc3"]


def event(dc: str, n: int) -> Envelope:
    room = f"room-{n % 3}"
    return Envelope.new(RoomMetadataUpdated(sid=f"RM_{dc}", metadata=str(n)), dc=dc, node=f"n-{dc}", room=room)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with run_mesh(tmp_path, DCS) as running:
        yield running


@pytest.fixture
async def buses(mesh: Mesh) -> AsyncIterator[dict[str, Bus]]:
    await asyncio.sleep(1.0)  # leafnodes connect (reconnect interval 1 s)
    async with AsyncExitStack() as stack:
        out: dict[str, Bus] = {}
        for dc in DCS:
            bus = await Bus.connect(mesh[dc].url, name=f"test-{dc}", dc=dc, node=f"n-{dc}", connect_timeout=5)
            stack.push_async_callback(bus.close)
            await bus.ensure_streams(datacenters=DCS)
            out[dc] = bus
        yield out


async def assert_exactly_once(buses: dict[str, Bus], published: list[str]) -> None:
    assert await replication_problems(buses, published) == []


async def test_ensure_streams_is_idempotent_and_single_dc_sources_itself(buses: dict[str, Bus]) -> None:
    bus = buses["dc1"]
    again = await bus.ensure_streams(datacenters=DCS)
    assert set(again.values()) == {"unchanged"}
    info = await bus.js.stream_info(replica_stream("dc1"))
    assert sorted(s.name for s in info.config.sources or []) == ["EVENTS_DC1", "EVENTS_DC2", "EVENTS_DC3"]
    assert {s.name: (s.external.api if s.external else None) for s in info.config.sources or []} == {
        "EVENTS_DC1": None, "EVENTS_DC2": "$JS.dc2.API", "EVENTS_DC3": "$JS.dc3.API"}
    # shrinking the mesh is an update, and a lone DC sources only itself
    assert (await bus.ensure_streams([], datacenters=["dc1"])) == {"REPLICA_DC1": "updated"}
    info = await bus.js.stream_info(replica_stream("dc1"))
    assert [s.name for s in info.config.sources or []] == ["EVENTS_DC1"]


async def test_events_of_every_dc_reach_every_replica_exactly_once(buses: dict[str, Bus]) -> None:
    published = []
    for n in range(30):
        for dc, bus in buses.items():
            env = event(dc, n)
            await bus.publish_event(env)
            published.append(env.id)
    await bus.publish_event(Envelope.from_json(Envelope.new(  # a producer retry: same id, stored once
        RoomMetadataUpdated(sid="RM_dc3", metadata="x"), dc="dc3", node="n", room="r", event_id=published[-1]
    ).to_json()))
    await wait_for_counts(buses, len(published), within=15)
    await asyncio.sleep(0.5)  # nothing more may arrive
    await assert_exactly_once(buses, published)


async def test_cut_spoke_works_alone_and_catches_up_after_heal(mesh: Mesh, buses: dict[str, Bus]) -> None:
    """dc2 is cut off for ~20 s while every DC keeps publishing; dc2 still publishes and
    consumes on its own; after the heal every replica holds every id exactly once within 10 s."""
    kickers = [SourceKicker(bus.nc, bus.js, dc, DCS).start() for dc, bus in buses.items()]
    published: list[str] = []
    before = []
    for dc, bus in buses.items():
        env = event(dc, -1)
        await bus.publish_event(env)
        before.append(env.id)
    published += before
    await wait_for_counts(buses, len(before), within=15)

    stop = asyncio.Event()

    async def keep_publishing(dc: str, bus: Bus) -> None:
        n = 0
        while not stop.is_set():
            env = event(dc, n)
            await bus.publish_event(env, timeout=5)  # a cut DC publishes to its own stream: no failure
            published.append(env.id)
            n += 1
            await asyncio.sleep(0.02)

    publishers = [asyncio.create_task(keep_publishing(dc, bus)) for dc, bus in buses.items()]
    try:
        mesh.cut("dc2")
        await asyncio.sleep(5)  # past the servers' ping timeout: the leafnode is down
        dc2_during = await replica_count(buses["dc2"])
        # dc2 alone: its events land in its replica, a new consumer can be created and read
        ids_dc2 = await read_ids(buses["dc2"], replica_stream("dc2"))
        assert len(ids_dc2) >= dc2_during
        await asyncio.sleep(15)
        dc2_now = await replica_count(buses["dc2"])
        assert dc2_now > dc2_during, "dc2 stopped replicating its own events while cut off"
    finally:
        stop.set()
        await asyncio.gather(*publishers)
    dc1_ids = set(await read_ids(buses["dc1"], replica_stream("dc1")))
    assert len(set(published) - dc1_ids) > 100, "the cut did not keep dc2's events from dc1"

    mesh.heal("dc2")
    catch_up = await wait_for_counts(buses, len(published), within=30)
    print(f"catch-up after heal: {catch_up} for {len(published)} events, kicks={[k.stats.kicks for k in kickers]}")
    for kicker in kickers:
        await kicker.stop()
    assert max(catch_up.values()) < 10.0
    await asyncio.sleep(1.0)
    await assert_exactly_once(buses, published)


async def test_kicker_repairs_a_replica_that_lost_a_source(buses: dict[str, Bus]) -> None:
    """A replica whose sources differ from the desired ones (e.g. a half-done update) is put back,
    and the re-added source resumes where the stream was: nothing missing, nothing doubled."""
    bus = buses["dc1"]
    published = []
    for n in range(5):
        for dc, other in buses.items():
            env = event(dc, n)
            await other.publish_event(env)
            published.append(env.id)
    await wait_for_counts(buses, len(published), within=15)
    info = await bus.js.stream_info(replica_stream("dc1"))
    info.config.sources = [s for s in info.config.sources or [] if s.name != "EVENTS_DC3"]
    await bus.js.update_stream(info.config)
    env = event("dc3", 99)
    await buses["dc3"].publish_event(env)  # published while dc1 does not source dc3
    published.append(env.id)

    kicker = SourceKicker(bus.nc, bus.js, "dc1", DCS)
    assert await kicker.check() == [] and kicker.stats.repairs == 1
    info = await bus.js.stream_info(replica_stream("dc1"))
    assert sorted(s.name for s in info.config.sources or []) == ["EVENTS_DC1", "EVENTS_DC2", "EVENTS_DC3"]
    await wait_for_counts({"dc1": bus}, len(published), within=15)
    await asyncio.sleep(0.5)
    assert await replication_problems({"dc1": bus}, published) == []
