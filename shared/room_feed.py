"""Every event of one room, from every DC, in replica order: history first, then live.

A media node uses it to learn which participants and tracks of its rooms live on other nodes
and in other DCs (docs/multi-dc.md). It reads `REPLICA_<DC>` (all DCs' events) with an
ephemeral, unacknowledged pull consumer filtered on the room's subject token, and remembers the
stream sequence of the last event it delivered. When anything goes wrong (a NATS reconnect or
restart, the server dropping the ephemeral consumer) it makes a new consumer that starts right
after that sequence, so no event is lost or delivered twice. Per-origin order is kept; events
from different DCs interleave in the order they reached this DC's replica.

A handler that raises is logged and the feed moves on: one bad event must not stall a room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from shared.bus import Bus
from shared.bus_consumer import unsubscribe_quietly
from shared.contracts.subjects import room_events_any_dc_filter
from shared.events import Envelope, EventDecodeError
from shared.replication import replica_stream
from shared.tasks import cancel_and_wait

log = logging.getLogger("meshrtc.room_feed")

FeedHandler = Callable[[Envelope], Awaitable[None]]


class RoomFeed:
    def __init__(
        self,
        bus: Bus,
        dc: str,
        room: str,
        handler: FeedHandler,
        *,
        batch: int = 100,
        fetch_timeout: float = 1.0,
        inactive_threshold: float = 30.0,
    ) -> None:
        self.bus = bus
        self.stream = replica_stream(dc)
        self.room = room
        self.filter_subject = room_events_any_dc_filter(room)
        self._handler = handler
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.inactive_threshold = inactive_threshold
        self.last_seq = 0  # stream sequence of the last event handed to the handler
        self.delivered = 0
        self.resubscribes = 0  # consumers re-made after an error
        self.caught_up = asyncio.Event()  # set once the history has been delivered
        self._sub: JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"RoomFeed({self.stream}, {self.room!r}, last_seq={self.last_seq})"

    async def start(self) -> RoomFeed:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"room-feed:{self.room}")
        return self

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._unsubscribe()

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if self.last_seq else DeliverPolicy.ALL,
            opt_start_seq=self.last_seq + 1 if self.last_seq else None,
            inactive_threshold=self.inactive_threshold,
            filter_subject=self.filter_subject,
        )
        return await self.bus.js.pull_subscribe(self.filter_subject, stream=self.stream, config=config)

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        await unsubscribe_quietly(sub)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                if self._sub is None:
                    self._sub = await self._subscribe()
                # One message first, so a live event never waits on a batch that is not there;
                # then, without waiting, whatever backlog the server reports (history at start).
                msgs = await self._sub.fetch(1, timeout=self.fetch_timeout)
                pending = msgs[-1].metadata.num_pending if msgs else 0
                if pending:  # a backlog (history on start): these are there already, no wait
                    with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
                        msgs += await self._sub.fetch(min(self.batch, pending), timeout=self.fetch_timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                if self._sub is not None and not self.caught_up.is_set():
                    await self._check_caught_up()
                continue
            except nats.errors.ConnectionClosedError:
                log.info("room feed %s: bus closed, stopping", self.room)
                return
            except Exception as exc:
                self.resubscribes += 1
                log.warning("room feed %s: %s: %s; resuming after seq %d in %.1fs", self.room,
                            type(exc).__name__, exc, self.last_seq, backoff)
                await self._unsubscribe()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            for msg in msgs:
                await self._deliver(msg.metadata.sequence.stream, msg.data)
            if msgs and msgs[-1].metadata.num_pending == 0:
                self.caught_up.set()

    async def _check_caught_up(self) -> None:
        with contextlib.suppress(Exception):
            assert self._sub is not None
            info = await self._sub.consumer_info()
            if info.num_pending == 0:
                self.caught_up.set()

    async def _deliver(self, seq: int, data: bytes) -> None:
        if seq <= self.last_seq:
            return  # a consumer re-made after a reconnect may start where we already were
        self.last_seq = seq
        try:
            env = Envelope.from_json(data)
        except EventDecodeError as exc:
            log.warning("room feed %s: skipping undecodable event at seq %d: %s", self.room, seq, exc)
            return
        try:
            await self._handler(env)
        except Exception:
            log.exception("room feed %s: handler failed on %s %s (seq %d); going on", self.room, env.type,
                          env.id, seq)
        self.delivered += 1
