"""Billing service against a real nats-server and SQLite: exactly-once metering through duplicate
publishes, duplicate handler calls, crashes and restarts; rollup events; the usage API over the bus
and over the signal edge's GET /usage."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from examples.billing_consumer import Ledger, consume
from services.billing.app import BillingService
from services.billing.store import rollup_event_id
from services.signal.http import build_app
from shared.auth import Claims, TokenVerifier, VideoGrant, mint_token
from shared.bus import Bus
from shared.config import Settings
from shared.contracts.billing import UsageQuery
from shared.contracts.subjects import rollup_subject, stream_name, usage_request_subject, usage_subject
from shared.db import upgrade
from shared.events import Envelope, UsageRollup, UsageSample
from shared.natsserver import NatsServer

pytestmark = [pytest.mark.filterwarnings("ignore:.*HMAC key.*")]

DC = "dc1"
T = (int(time.time() * 1000) // 60_000 - 10) * 60_000  # ten minutes ago, on a minute boundary
KEY, SECRET = "devkey", "secret"


def sample_env(start_s: float, nbytes: int, *, who: str = "alice", direction: str = "downstream", room: str = "r1",
               track: str = "", connection_ms: int = 0, length_s: float = 5) -> Envelope:
    payload = UsageSample(project=KEY, room=room, room_sid=f"RM_{room}", participant_sid=f"PA_{who}", identity=who,
                          track_sid=track, direction=direction, bytes=nbytes, packets=max(1, nbytes // 1000),  # type: ignore[arg-type]
                          connection_ms=connection_ms, start_ms=T + int(start_s * 1000),
                          end_ms=T + int((start_s + length_s) * 1000))
    return Envelope.new(payload, dc=DC, node="media-test", room=room)


async def wait_until(predicate: Callable[[], Any], within: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def settings(nats_server: NatsServer, tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'billing.db'}"
    upgrade(url)
    return Settings(nats_url=nats_server.url, dc=DC, node_id="billing-test", database_url=url,
                    api_keys={KEY: SECRET})


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_server.url, name="test", dc=DC, node="media-test", connect_timeout=5)
    await b.ensure_streams()
    yield b
    await b.close()


async def start_billing(settings: Settings, **kwargs: Any) -> BillingService:
    service = BillingService(settings, **kwargs)
    await service.start()
    return service


def billed(service: BillingService, **query: Any) -> dict[str, Any]:
    assert service.store
    return service.store.usage(UsageQuery(**query))["totals"]  # type: ignore[no-any-return]


async def test_the_same_sample_published_twice_counts_once(settings: Settings, bus: Bus) -> None:
    service = await start_billing(settings)
    try:
        env = sample_env(0, 12_345)
        first = await bus.publish_event(env, usage_subject(DC, "r1"))
        second = await bus.publish_event(env, usage_subject(DC, "r1"))
        assert not first.duplicate and second.duplicate  # the stream dropped the copy
        other = sample_env(5, 1_000)
        await bus.publish_event(other, usage_subject(DC, "r1"))
        await wait_until(lambda: service.applied == 2, what="two samples applied")
        await asyncio.sleep(0.5)
        assert billed(service)["bytes"]["downstream"] == 13_345
        assert service.store and service.store.sample_count() == 2
    finally:
        await service.stop()


async def test_the_same_sample_handled_twice_counts_once(settings: Settings, bus: Bus) -> None:
    service = await start_billing(settings)
    try:
        env = sample_env(0, 500, direction="upstream", connection_ms=5000)
        first = await service.ingest([env])
        second = await service.ingest([env])
        assert (first.applied, first.duplicates) == (1, 0)
        assert (second.applied, second.duplicates) == (0, 1)
        # and delivered through the stream after the handler already applied it (a crash after the
        # commit, before the ack): skipped
        await bus.publish_event(env, usage_subject(DC, "r1"))
        await wait_until(lambda: service.duplicates == 2, what="the stream copy to be skipped")
        totals = billed(service)
        assert totals["bytes"]["upstream"] == 500 and totals["connection_ms"] == 5000
        assert service.consumer and service.consumer.acked == 1
    finally:
        await service.stop()


async def test_restart_resumes_without_loss_or_double_count(settings: Settings, bus: Bus) -> None:
    service = await start_billing(settings)
    sent = 0
    for i in range(50):
        await bus.publish_event(sample_env(i, 100 + i), usage_subject(DC, "r1"))
        sent += 100 + i
    await wait_until(lambda: service.applied == 50, what="first 50 samples")
    await service.stop()
    for i in range(50, 120):  # while billing is down
        await bus.publish_event(sample_env(i, 100 + i), usage_subject(DC, "r1"))
        sent += 100 + i
    service = await start_billing(settings)
    try:
        await wait_until(lambda: billed(service)["bytes"]["downstream"] == sent, what="the backlog")
        assert service.store and service.store.sample_count() == 120
    finally:
        await service.stop()


async def test_an_unacked_batch_is_redelivered_and_deduplicated(settings: Settings, bus: Bus) -> None:
    """A billing process killed after its commit and before its acks: the next one gets the batch
    again (after ack_wait) and skips every sample in it."""
    envs = [sample_env(i, 1000) for i in range(10)]
    for env in envs:  # all in the stream before billing starts: one fetched batch
        await bus.publish_event(env, usage_subject(DC, "r1"))
    service = BillingService(settings, ack_wait=2.0)
    committed = asyncio.Event()
    original = service._on_batch

    async def commit_then_die(msgs: Any) -> list[Any]:
        await original(msgs)
        committed.set()
        raise asyncio.CancelledError  # like a SIGKILL right after the commit: no ack, no nak

    service._on_batch = commit_then_die  # type: ignore[method-assign]
    await service.start()
    assert service.consumer
    await asyncio.wait_for(committed.wait(), 10)
    assert billed(service)["bytes"]["downstream"] == 10_000  # committed
    await service.consumer._unbind()  # the dead process's subscription goes away with it
    if service.consumer._task:
        service.consumer._task.cancel()
    await service.stop()
    service = await start_billing(settings, ack_wait=2.0)
    try:
        await wait_until(lambda: service.duplicates >= 10, within=20, what="redelivery")
        assert billed(service)["bytes"]["downstream"] == 10_000
        assert service.store and service.store.sample_count() == 10
    finally:
        await service.stop()


async def test_track_samples_and_garbage_are_not_billed(settings: Settings, bus: Bus) -> None:
    service = await start_billing(settings)
    try:
        await bus.publish_event(sample_env(0, 777, track="TR_1"), usage_subject(DC, "r1"))
        await bus.publish_js(usage_subject(DC, "r1"), b"not json", msg_id="garbage-1")
        await bus.publish_event(sample_env(0, 5), usage_subject(DC, "r1"))
        await wait_until(lambda: service.applied == 1, what="the participant total")
        await wait_until(lambda: service.consumer and service.consumer.termed == 1, what="garbage termed")
        assert billed(service)["bytes"]["downstream"] == 5
    finally:
        await service.stop()


async def rollup_events(bus: Bus) -> list[Envelope]:
    js = bus.js
    info = await js.stream_info(stream_name("billing", DC))
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream_name("billing", DC), seq)
        out.append(Envelope.from_json(msg.data))
    return out if info.state.messages else []


async def test_closed_minutes_are_published_once_with_deterministic_ids(settings: Settings, bus: Bus) -> None:
    service = await start_billing(settings, publish_interval=3600)  # rounds driven by the test
    try:
        for i in range(12):
            await bus.publish_event(sample_env(i * 5, 1000), usage_subject(DC, "r1"))
            await bus.publish_event(sample_env(i * 5, 10, direction="upstream", connection_ms=5000),
                                    usage_subject(DC, "r1"))
        await bus.publish_event(sample_env(60, 3000), usage_subject(DC, "r1"))  # the next minute
        await wait_until(lambda: service.applied == 25, what="samples")
        # minute T closes at T+60s+70s; T+60s not yet at that time
        assert await service.publish_rollups(now=T + 130_000) == 2
        assert await service.publish_rollups(now=T + 130_000) == 0  # nothing changed
        events = await rollup_events(bus)
        assert len(events) == 2
        by_direction = {e.payload.direction: e for e in events}  # type: ignore[attr-defined]
        down = by_direction["downstream"]
        assert isinstance(down.payload, UsageRollup)
        assert (down.payload.bytes, down.payload.samples) == (12_000, 12)
        rev = down.payload.revision  # one per transaction that touched the row
        assert down.payload.minute_start_ms == T and down.payload.minute_end_ms == T + 60_000
        assert by_direction["upstream"].payload.connection_ms == 60_000  # type: ignore[attr-defined]
        assert down.id == rollup_event_id(down.payload.key, rev, T)
        assert down.room == "r1"
        # publishing the same revision again (a crash before mark_published) is deduplicated
        assert service.store
        row = next(r for r in service.store.pending(None) if r.minute_ms == T + 60_000)
        again = await bus.publish_event(service.rollup_envelope(row), rollup_subject(DC))
        assert not again.duplicate
        assert (await bus.publish_event(service.rollup_envelope(row), rollup_subject(DC))).duplicate
        # a late sample for the published minute: revision 2 of the same key
        await bus.publish_event(sample_env(40, 500), usage_subject(DC, "r1"))
        await wait_until(lambda: service.applied == 26, what="late sample")
        assert await service.publish_rollups(now=T + 130_000) == 1
        late = [e for e in await rollup_events(bus) if e.payload.key == down.payload.key]  # type: ignore[attr-defined]
        assert [(e.payload.revision, e.payload.bytes) for e in late] == [(rev, 12_000), (rev + 1, 12_500)]  # type: ignore[attr-defined]
    finally:
        await service.stop()


async def test_shutdown_publishes_open_minutes_and_the_example_consumer_reads_them(
        settings: Settings, bus: Bus, nats_server: NatsServer) -> None:
    service = await start_billing(settings, publish_interval=3600)
    now = int(time.time() * 1000)
    open_minute = Envelope.new(UsageSample(project=KEY, room="r9", participant_sid="PA_z", identity="z",
                                           direction="downstream", bytes=4242, start_ms=now - 5000, end_ms=now),  # type: ignore[arg-type]
                               dc=DC, node="media-test", room="r9")
    await bus.publish_event(open_minute, usage_subject(DC, "r9"))
    await bus.publish_event(sample_env(0, 1000), usage_subject(DC, "r1"))
    await wait_until(lambda: service.applied == 2, what="samples")
    await service.stop()  # publishes both, the open minute included
    events = await rollup_events(bus)
    assert sorted(e.payload.bytes for e in events) == [1000, 4242]  # type: ignore[attr-defined]
    ledger = Ledger()
    assert await consume(nats_server.url, DC, "example-test", ledger, once=True) == 2
    assert await consume(nats_server.url, DC, "example-test", ledger, once=True) == 0  # durable: caught up
    assert ledger.totals()[(KEY, "r9", "downstream")]["bytes"] == 4242
    ledger2 = Ledger()  # a new consumer replays everything; duplicates of a revision change nothing
    for env in events + events:
        ledger2.apply(env.to_dict())
    assert ledger2.totals() == ledger.totals()


async def test_usage_api_over_the_bus(settings: Settings, bus: Bus) -> None:
    service = await start_billing(settings)
    try:
        await service.ingest([sample_env(0, 2_000_000, connection_ms=10_000, direction="upstream"),
                              sample_env(0, 2_000_000), sample_env(0, 1_000, who="bob", room="r2")])
        reply = json.loads(await bus.request(usage_request_subject(DC), UsageQuery(room="r1").to_json(), timeout=5))
        assert reply["version"] == 1
        assert reply["totals"]["bytes"]["downstream"] == 2_000_000
        assert reply["totals"]["connection_minutes"] == 1.0
        assert reply["totals"]["cost"]["exact_total"] == "0.0017"  # 2 MB bills 0.01 GB ($0.0012) + 1 min ($0.0005)
        assert len(reply["rows"]) == 2
        bad = json.loads(await bus.request(usage_request_subject(DC), b'{"from_ms": "x"}', timeout=5))
        assert bad["status"] == 400 and "from_ms" in bad["error"]
    finally:
        await service.stop()


def token(**grant: Any) -> str:
    return mint_token(KEY, SECRET, Claims(identity="ops", video=VideoGrant(**grant)))


async def test_get_usage_on_the_signal_edge(settings: Settings, bus: Bus) -> None:
    edge = SimpleNamespace(bus=bus, settings=settings, verifier=TokenVerifier({KEY: SECRET}), node_id="signal-test")
    app = build_app(edge)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as client:
        async def get(params: dict[str, str], tok: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {tok}"} if tok else {}
            return await client.get("/usage", params=params, headers=headers)

        assert (await get({}, token(room_list=True))).status_code == 503  # billing not running
        service = await start_billing(settings)
        try:
            await service.ingest([sample_env(0, 100), sample_env(0, 50, who="bob", room="r2")])
            assert (await get({}, None)).status_code == 401
            assert (await get({}, "garbage")).status_code == 401
            assert (await get({}, token(room_join=True, room="r1"))).status_code == 403
            assert (await get({"room": "r2"}, token(room_admin=True, room="r1"))).status_code == 403
            scoped = await get({}, token(room_admin=True, room="r1"))  # roomAdmin: its own room only
            assert scoped.status_code == 200, scoped.text
            assert scoped.json()["totals"]["bytes"]["downstream"] == 100
            everything = await get({}, token(room_list=True))
            assert everything.json()["totals"]["bytes"]["downstream"] == 150
            assert everything.json()["query"]["project"] == KEY
            bob = await get({"participant": "bob", "from": "2000-01-01T00:00:00Z"}, token(room_list=True))
            assert bob.json()["totals"]["bytes"]["downstream"] == 50
            later = await get({"from": str(T // 1000 + 60)}, token(room_list=True))
            assert later.json()["totals"]["participants"] == 0
            bad = await get({"from": "yesterday"}, token(room_list=True))
            assert bad.status_code == 400 and "invalid from" in bad.json()["error"]
            assert (await get({"from": "2025-01-02", "to": "2025-01-01"}, token(room_list=True))).status_code == 400
        finally:
            await service.stop()


async def test_billing_rides_out_a_nats_restart(tmp_path: Path) -> None:
    from shared.natsserver import free_port

    store = tmp_path / "nats-restart"
    store.mkdir()
    server = NatsServer(port=free_port(), store_dir=str(store)).start()
    url = f"sqlite:///{tmp_path / 'restart.db'}"
    upgrade(url)
    settings = Settings(nats_url=server.url, dc=DC, node_id="billing-test", database_url=url)
    service = BillingService(settings)
    await service.start()
    publisher = await Bus.connect(server.url, name="pub", dc=DC, node="media-test", connect_timeout=5)
    try:
        for i in range(10):
            await publisher.publish_event(sample_env(i, 10), usage_subject(DC, "r1"))
        await wait_until(lambda: service.applied == 10, what="before the restart")
        server.stop(remove_store=False)
        await asyncio.sleep(1)
        server.start()
        for i in range(10, 30):
            await publisher.publish_event(sample_env(i, 10), usage_subject(DC, "r1"), timeout=20)
        await wait_until(lambda: service.applied == 30, within=30, what="after the restart")
        assert billed(service)["bytes"]["downstream"] == 300
    finally:
        await publisher.close()
        await service.stop()
        server.stop()
