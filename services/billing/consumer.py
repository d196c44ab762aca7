"""A durable JetStream pull consumer that hands whole fetched batches to its handler.

`shared.bus_consumer.Consumer` calls its handler once per message (both are `PullConsumer`s,
configured by a `ConsumerSettings`); billing wants one SQL transaction per
fetched batch (thousands of samples a second), so this loop pulls up to `batch` messages,
awaits `handler(msgs)` once, then acks them all. It pulls with JetStream's MSG.NEXT requests
answered into a callback subscription (nats-py's `fetch()` costs a task and a timer per
message, which capped ingest at ~2,000 samples/s on the 2-core dev machine). The handler
returns the messages it could not decode, which are terminated (never redelivered) instead. If
the handler raises, the whole batch is naked with a delay and comes back; the handler must be
idempotent (billing is: sample ids).

`stop()` lets a batch that is being applied finish and be acked (up to `stop_timeout` seconds),
so an orderly shutdown leaves nothing for redelivery; a SIGKILL leaves the batch unacked, and
JetStream redelivers it after `ack_wait` to whichever process binds the durable next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.bus import Bus
from shared.bus_consumer import ConsumerSettings, PullConsumer
from shared.contracts.subjects import jetstream_next_subject

log = logging.getLogger(__name__)

BatchHandler = Callable[[list[Msg]], Awaitable[Iterable[Msg]]]

# Thousands of samples a second: big pulls, many in flight, a short fetch so the pipeline keeps
# moving, and a failed batch back after a fixed second (it is one SQL transaction, not a message).
BATCH_CONSUMER = ConsumerSettings(batch=1000, ack_wait=15.0, max_ack_pending=20_000, fetch_timeout=1.0,
                                  nak_base_delay=1.0, nak_max_delay=1.0)


class BatchConsumer(PullConsumer):
    def __init__(
        self,
        bus: Bus,
        stream: str,
        durable: str,
        handler: BatchHandler,
        *,
        filter_subject: str | None = None,
        settings: ConsumerSettings = BATCH_CONSUMER,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(bus.nc, bus.js, stream, durable, filter_subject=filter_subject, settings=settings)
        self.bus = bus
        self.handler = handler
        self.stop_timeout = stop_timeout
        self.linger = 0.005  # seconds without a new delivery that end a batch early
        self._next_subject = jetstream_next_subject(stream, durable)
        self._inbox = ""
        self._buffer: list[Msg] = []
        self._arrived = asyncio.Event()
        self._answered = False
        self._lost = False
        self._request_no = 0
        self._inflight: asyncio.Task[None] | None = None
        self._busy = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.batches = 0  # for health checks, tests and the benchmark, with the base's counters

    async def _finish_handling(self) -> None:
        if self._busy:  # a batch is being applied: let it commit and be acked
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.stop_timeout)

    async def _release_unhandled(self) -> None:
        leftover, self._buffer = self._buffer, []
        for msg in leftover:  # received, never applied: back to the stream for the next process
            with contextlib.suppress(Exception):
                await msg.nak()

    async def _subscribe(self) -> Subscription:
        """Our private inbox for the durable's deliveries."""
        self._inbox = self._nc.new_inbox()
        return await self._nc.subscribe(self._inbox + ".*", cb=self._on_delivery)

    async def _on_delivery(self, msg: Msg) -> None:
        # Runs for every message: keep it cheap. Status messages (408 request expired, 404 none,
        # 409 consumer gone) end a pull request; everything else is a stream message for us.
        if msg.headers and "Status" in msg.headers:
            if msg.headers["Status"] == "409" and "Deleted" in msg.headers.get("Description", ""):
                self._lost = True
            self._answered = True
        else:
            self._buffer.append(msg)
        self._arrived.set()

    async def _pull(self) -> None:
        """Ask for up to `batch` messages (JetStream's MSG.NEXT), answered into our inbox."""
        self._request_no += 1
        request = json.dumps({"batch": self.batch, "expires": int(self.settings.fetch_timeout * 1e9)}).encode()
        self._answered = False
        await self._nc.publish(self._next_subject, request, reply=f"{self._inbox}.{self._request_no}")

    async def _collect(self) -> None:
        """Wait for the first delivery (or the request's end), then briefly for the rest of it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.fetch_timeout + 1.0
        while not self._buffer and not self._answered:
            self._arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("no answer to a pull request")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        # deliveries of one request come back to back: wait while they keep coming
        while self._buffer and len(self._buffer) < self.batch and not self._answered:
            size = len(self._buffer)
            await asyncio.sleep(self.linger)
            if len(self._buffer) == size:
                break

    async def _pull_batch(self) -> list[Msg]:
        # No answer to a pull (reconnecting, server restart) raises: a pull error, like a bind error.
        if self._sub is None or self._lost:
            self._lost = False
            await self._bind()
        if not self._buffer:
            await self._pull()
        await self._collect()
        # deliveries of a request still open keep arriving into the buffer: the next round
        msgs, self._buffer = self._buffer[:self.batch], self._buffer[self.batch:]
        return msgs

    async def _dispatch(self, msgs: list[Msg]) -> None:
        # Pipelined: while this batch is applied (its SQL runs in a thread), the loop pulls
        # and receives the next one. Batches are still applied one at a time, in order.
        await self._wait_inflight()
        self._busy = True
        self._idle.clear()
        self._inflight = asyncio.create_task(self._handle(msgs))
        self._inflight.add_done_callback(self._handled)

    def _handled(self, _task: asyncio.Task[None]) -> None:
        self._busy = False
        self._idle.set()

    async def _wait_inflight(self) -> None:
        task = self._inflight
        if task is not None and not task.done():
            # shielded: cancelling the loop (stop) must not abandon a batch half-acked
            await asyncio.shield(task)

    async def _handle(self, msgs: list[Msg]) -> None:
        try:
            bad = list(await self.handler(msgs))
        except Exception:
            self.naked += len(msgs)
            delay = self.settings.nak_delay(1)
            log.exception("consumer %s/%s: batch of %d failed; redelivery in %.1fs", self.stream, self.durable,
                          len(msgs), delay)
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=delay)
            return
        self.batches += 1
        bad_ids = {id(m) for m in bad}
        for msg in msgs:
            try:
                if id(msg) in bad_ids:
                    await msg.term()
                    self.termed += 1
                else:
                    await msg.ack()
                    self.acked += 1
            except Exception as exc:  # the bus is down: JetStream redelivers after ack_wait
                log.warning("consumer %s/%s: ack failed (%s); the batch will be redelivered and deduped",
                            self.stream, self.durable, exc)
                return
