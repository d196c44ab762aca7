"""shared.bus against a real nats-server (JetStream)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from shared.bus import (
    DAY,
    Bus,
    BusTimeout,
    BusUnavailable,
    MsgMeta,
    PublishAck,
    RemoteError,
    StreamSpec,
)
from shared.bus_consumer import ConsumerSettings
from shared.contracts.subjects import event_subject, events_prefix, stream_name
from shared.events import Envelope, RoomCreated
from shared.natsserver import NatsServer, free_port

DC = "dc1"
EVENTS = stream_name("events", DC)


def make_event(i: int, room: str = "lobby.*> x") -> Envelope:
    return Envelope.new(RoomCreated(sid=f"RM_{i}", name=room), dc=DC, node="n1", room=room)


async def wait_until(predicate: Callable[[], bool], within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def connect(url: str, **kw: float) -> Bus:
    return await Bus.connect(url, name="test", dc=DC, node="n1", connect_timeout=5, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    b = await connect(nats_server.url)
    await b.ensure_streams()
    yield b
    await b.close()


async def test_connect_unreachable_raises_clear_error() -> None:
    started = time.monotonic()
    with pytest.raises(BusUnavailable) as info:
        await Bus.connect("nats://127.0.0.1:1", name="t", dc=DC, node="n1", connect_timeout=0.5)
    assert time.monotonic() - started < 4
    message = str(info.value)
    assert "nats://127.0.0.1:1" in message and "MESHRTC_NATS_URL" in message

    with pytest.raises(BusUnavailable) as info:
        await Bus.connect("nats://bob:s3cret@127.0.0.1:1", name="t", dc=DC, node="n1", connect_timeout=5,
                          attempts=1)
    assert "s3cret" not in str(info.value) and "127.0.0.1:1" in str(info.value)


async def test_connect_retries_until_the_server_is_up(tmp_path: Path) -> None:
    server = NatsServer(port=free_port(), store_dir=str(tmp_path))
    connecting = asyncio.create_task(connect(server.url))
    await asyncio.sleep(0.6)
    assert not connecting.done()
    server.start()
    try:
        b = await connecting
        assert b.is_connected
        await b.close()
        assert not b.is_connected
    finally:
        server.stop()


async def test_consumer_recreates_a_lost_durable(bus: Bus) -> None:
    seen: list[str] = []

    async def handler(env: Envelope, meta: MsgMeta) -> None:
        if env.id not in seen:
            seen.append(env.id)

    c = await bus.consume(EVENTS, "fragile", handler, settings=ConsumerSettings(fetch_timeout=0.5))
    await bus.publish_event(make_event(1))
    await wait_until(lambda: len(seen) == 1, what="first event")
    await bus.js.delete_consumer(EVENTS, "fragile")
    await bus.publish_event(make_event(2))
    await wait_until(lambda: len(seen) == 2, what="event after the durable was deleted")
    assert c.running and c.fetch_errors >= 1
    await c.stop()


async def test_ensure_streams_idempotent(nats_server: NatsServer) -> None:
    b = await connect(nats_server.url)
    try:
        first = await b.ensure_streams()
        assert first == {f"{k}_DC1": "created" for k in ("EVENTS", "USAGE", "BILLING", "TELEMETRY")}
        assert set((await b.ensure_streams()).values()) == {"unchanged"}
        info = await b.js.stream_info(EVENTS)
        assert info.config.subjects == [f"{events_prefix(DC)}.>"]
        assert info.config.duplicate_window == 120 and info.config.max_age == 7 * DAY
        assert info.config.storage == "file"
        # a changed declaration updates the stream in place
        changed = StreamSpec("events", max_age=2 * DAY)
        assert await b.ensure_streams([changed]) == {EVENTS: "updated"}
        assert (await b.js.stream_info(EVENTS)).config.max_age == 2 * DAY
        assert await b.ensure_streams([changed]) == {EVENTS: "unchanged"}
    finally:
        await b.close()


async def test_same_event_twice_is_stored_once(bus: Bus) -> None:
    env = make_event(1)
    first = await bus.publish_event(env)
    again = await bus.publish_event(env)
    assert isinstance(first, PublishAck) and first.stream == EVENTS
    assert not first.duplicate and again.duplicate and int(again) == int(first)
    other = await bus.publish_event(make_event(2))
    assert int(other) == int(first) + 1
    assert (await bus.js.stream_info(EVENTS)).state.messages == 2


async def test_durable_consumer_stop_mid_batch_then_resume(bus: Bus) -> None:
    events = [make_event(i) for i in range(100)]
    for env in events:
        await bus.publish_event(env)
    all_ids = {e.id for e in events}

    applied: list[str] = []  # what an idempotent handler really applies
    acked_by_first: list[str] = []
    gate = asyncio.Event()
    in_flight: list[str] = []

    async def first_handler(env: Envelope, meta: MsgMeta) -> None:
        if env.id in applied:
            return
        if len(applied) == 37:  # mid-batch (batch=16): hang until cancelled by stop()
            in_flight.append(env.id)
            await gate.wait()
        applied.append(env.id)
        acked_by_first.append(env.id)

    c1 = await bus.consume(EVENTS, "proj", first_handler, settings=ConsumerSettings(batch=16))
    await wait_until(lambda: bool(in_flight), what="handler to block")
    await c1.stop()
    assert not c1.running and len(applied) == 37

    deliveries: Counter[str] = Counter()
    redelivered: dict[str, int] = {}

    async def second_handler(env: Envelope, meta: MsgMeta) -> None:
        deliveries[env.id] += 1
        if meta.num_delivered > 1:
            redelivered[env.id] = meta.num_delivered
        if env.id not in applied:
            applied.append(env.id)

    c2 = await bus.consume(EVENTS, "proj", second_handler, settings=ConsumerSettings(batch=16))
    await wait_until(lambda: len(applied) == 100, what="all events applied")
    await c2.stop()

    assert sorted(applied) == sorted(all_ids) and len(applied) == len(set(applied))
    assert applied == [e.id for e in events]  # stream order kept across the restart
    # acked events are never redelivered; the rest (incl. the cancelled one) come at once
    assert set(deliveries) == all_ids - set(acked_by_first)
    assert all(n == 1 for n in deliveries.values())
    assert in_flight[0] in redelivered


async def test_handler_crash_is_redelivered_without_blocking(bus: Bus) -> None:
    events = [make_event(i) for i in range(20)]
    for env in events:
        await bus.publish_event(env)
    crashed = events[5].id
    order: list[str] = []
    attempts: Counter[str] = Counter()

    async def handler(env: Envelope, meta: MsgMeta) -> None:
        attempts[env.id] += 1
        if env.id == crashed and meta.num_delivered == 1:
            raise RuntimeError("transient failure")
        order.append(env.id)

    c = await bus.consume(EVENTS, "crashy", handler, settings=ConsumerSettings(batch=8, nak_base_delay=0.2))
    await wait_until(lambda: len(order) == 20, what="all events handled")
    await c.stop()
    assert attempts[crashed] == 2 and c.naked == 1
    assert order[-1] == crashed  # the others went on while it waited for redelivery
    assert sorted(order) == sorted(e.id for e in events)


async def test_garbage_is_termed_and_does_not_block(bus: Bus) -> None:
    subject = event_subject(DC, "room.created", "lobby")
    await bus.publish_js(subject, b"\x00\xffnot json", msg_id="garbage-1")
    await bus.publish_js(subject, b'{"type": "no.such_event", "id": "x"}', msg_id="garbage-2")
    good = [make_event(i) for i in range(3)]
    for env in good:
        await bus.publish_event(env)
    seen: list[str] = []

    async def handler(env: Envelope, meta: MsgMeta) -> None:
        seen.append(env.id)

    c = await bus.consume(EVENTS, "garbage", handler)
    await wait_until(lambda: len(seen) == 3, what="good events")
    await c.stop()
    assert seen == [e.id for e in good] and c.termed == 2
    info = await bus.js.consumer_info(EVENTS, "garbage")
    assert info.num_pending == 0 and info.num_ack_pending == 0 and info.num_redelivered == 0


async def test_request_reply(bus: Bus) -> None:
    async def upper(data: bytes) -> bytes:
        if data == b"fail":
            raise ValueError("bad input\nsecond line")
        return data.upper()

    await bus.serve("ctl.dc1.room.echo", upper, queue="room")
    assert await bus.request("ctl.dc1.room.echo", b"hello") == b"HELLO"
    with pytest.raises(RemoteError) as info:
        await bus.request("ctl.dc1.room.echo", b"fail")
    assert "ValueError: bad input second line" in str(info.value)
    assert await bus.request("ctl.dc1.room.echo", b"still up") == b"STILL UP"

    started = time.monotonic()
    with pytest.raises(BusTimeout, match=r"ctl\.dc1\.room\.nobody"):
        await bus.request("ctl.dc1.room.nobody", b"x", timeout=2.0)
    assert time.monotonic() - started < 1.0  # no responders: immediate, not the full timeout

    async def slow(data: bytes) -> bytes:
        await asyncio.sleep(1)
        return data

    await bus.serve("ctl.dc1.room.slow", slow)
    with pytest.raises(BusTimeout, match=r"within 0\.2s"):
        await bus.request("ctl.dc1.room.slow", b"x", timeout=0.2)


async def test_subscription_survives_handler_exception(bus: Bus) -> None:
    got: list[bytes] = []

    async def handler(msg: object) -> None:
        data: bytes = msg.data  # type: ignore[attr-defined]
        if data == b"boom":
            raise RuntimeError("handler bug")
        got.append(data)

    await bus.subscribe("telemetry.dc1.test", handler)
    for data in (b"one", b"boom", b"two"):
        await bus.publish("telemetry.dc1.test", data)
    await wait_until(lambda: len(got) == 2, what="messages after the failure")
    assert got == [b"one", b"two"]


async def test_server_restart_outbox_and_consumer(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    store.mkdir()
    server = NatsServer(port=free_port(), store_dir=str(store)).start()
    b = await connect(server.url, reconnect_wait=0.1)
    try:
        downs: list[float] = []
        ups: list[float] = []
        b.on_disconnect(lambda: downs.append(time.monotonic()))

        async def on_up() -> None:
            ups.append(time.monotonic())

        b.on_reconnect(on_up)
        await b.ensure_streams()
        applied: list[str] = []

        async def handler(env: Envelope, meta: MsgMeta) -> None:
            if env.id not in applied:
                applied.append(env.id)

        consumer = await b.consume(EVENTS, "restart", handler, settings=ConsumerSettings(fetch_timeout=0.5))
        events = [make_event(i) for i in range(60)]
        for env in events[:10]:
            b.publish_event_nowait(env)
        await b.flush_outbox(5)
        await wait_until(lambda: len(applied) == 10, what="events before the restart")

        server.stop()
        await wait_until(lambda: bool(downs) and not b.is_connected, what="disconnect")
        for env in events[10:40]:
            b.publish_event_nowait(env)
        direct = asyncio.create_task(b.publish_event(events[40], timeout=20))
        await asyncio.sleep(0.3)
        assert b.outbox_size == 30 and not direct.done()

        server.start()
        await b.flush_outbox(20)
        ack = await direct
        assert ack.stream == EVENTS
        for env in events[41:]:
            b.publish_event_nowait(env)
        await b.flush_outbox(5)
        assert ups and b.is_connected
        await wait_until(lambda: len(applied) == 60, within=20, what="every event consumed")
        assert consumer.running
        info = await b.js.stream_info(EVENTS)
        assert info.state.messages == 60  # nothing lost, nothing stored twice
        assert sorted(applied) == sorted(e.id for e in events)
        assert b.outbox_dropped == 0
    finally:
        await b.close()
        server.stop()
