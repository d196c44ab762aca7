"""shared.room_feed.RoomFeed against real nats-servers: history then live, one room only, every
DC's events, and nothing lost or repeated across a NATS restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from shared.bus import Bus
from shared.events import Envelope, RoomMetadataUpdated
from shared.natsserver import NatsServer, free_port
from shared.room_feed import RoomFeed
from tests.support.mesh import run_mesh
from tests.support.waiting import wait_until

ROOM = "lobby.* >x"  # subject syntax in a room name must not leak into the filter


def event(dc: str, room: str, n: int) -> Envelope:
    return Envelope.new(RoomMetadataUpdated(sid="RM_1", metadata=str(n)), dc=dc, node=f"n-{dc}", room=room)



async def test_history_then_live_survives_a_nats_restart(tmp_path: Path) -> None:
    server = NatsServer(port=free_port(), store_dir=str(tmp_path)).start()
    bus = await Bus.connect(server.url, name="t", dc="dc1", node="n1", connect_timeout=5, reconnect_wait=0.2)
    got: list[str] = []

    async def handler(env: Envelope) -> None:
        got.append(env.id)

    feed = RoomFeed(bus, "dc1", ROOM, handler, fetch_timeout=0.5)
    try:
        await bus.ensure_streams(datacenters=["dc1"])
        expected = []
        for n in range(10):
            env = event("dc1", ROOM, n)
            await bus.publish_event(env)
            expected.append(env.id)
            await bus.publish_event(event("dc1", "other room", n))  # never delivered
        await feed.start()
        await asyncio.wait_for(feed.caught_up.wait(), 10)
        await wait_until(lambda: len(got) == 10, 10, "history")
        assert got == expected

        for n in range(10, 15):
            env = event("dc1", ROOM, n)
            await bus.publish_event(env)
            expected.append(env.id)
        await wait_until(lambda: len(got) == 15, 10, "live events")

        # a single live event is handed over as it arrives, not when a batch fills or times out
        feed.fetch_timeout = 5.0
        await asyncio.sleep(0.5)  # the fetch in flight ends; the next one waits up to 5 s
        env = event("dc1", ROOM, 99)
        sent_at = time.monotonic()
        await bus.publish_event(env)
        expected.append(env.id)
        await wait_until(lambda: len(got) == 16, 10, "one live event")
        assert time.monotonic() - sent_at < 1.0
        feed.fetch_timeout = 0.5

        server.stop(remove_store=False)
        await asyncio.sleep(1.0)
        server.start()
        for n in range(15, 25):
            env = event("dc1", ROOM, n)
            await bus.publish_event(env, timeout=15)
            expected.append(env.id)
        await wait_until(lambda: len(got) >= 26, 20, "events after the restart")
        await asyncio.sleep(1.5)  # a repeat would show up now
        assert got == expected

        # a long outage can outlive the ephemeral consumer: the feed makes a new one where it was
        for info in await bus.js.consumers_info("REPLICA_DC1"):
            await bus.js.delete_consumer("REPLICA_DC1", info.name)
        for n in range(25, 30):
            env = event("dc1", ROOM, n)
            await bus.publish_event(env)
            expected.append(env.id)
        await wait_until(lambda: len(got) >= 31, 20, "events after the consumer was lost")
        await asyncio.sleep(1.5)
        assert got == expected
        assert feed.resubscribes >= 1
    finally:
        await feed.stop()
        await bus.close()
        server.stop()


async def test_feed_in_one_dc_gets_the_room_events_of_every_dc(tmp_path: Path) -> None:
    async with run_mesh(tmp_path, ["dc1", "dc2"]) as mesh:
        await asyncio.sleep(1.0)
        buses = {dc: await Bus.connect(mesh[dc].url, name="t", dc=dc, node=f"n-{dc}", connect_timeout=5)
                 for dc in ("dc1", "dc2")}
        got: list[Envelope] = []

        async def handler(env: Envelope) -> None:
            got.append(env)

        feed = RoomFeed(buses["dc2"], "dc2", ROOM, handler)
        try:
            for bus in buses.values():
                await bus.ensure_streams(datacenters=["dc1", "dc2"])
            await feed.start()
            sent = {"dc1": [], "dc2": []}
            for n in range(5):
                for dc, bus in buses.items():
                    env = event(dc, ROOM, n)
                    await bus.publish_event(env)
                    sent[dc].append(env.id)
            await wait_until(lambda: len(got) == 10, 15, "events of both DCs")
            for dc in ("dc1", "dc2"):  # per-origin order is kept
                assert [e.id for e in got if e.dc == dc] == sent[dc]
        finally:
            await feed.stop()
            for bus in buses.values():
                await bus.close()
