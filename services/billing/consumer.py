"""A durable JetStream pull consumer that hands whole fetched batches to its handler.

`shared.bus.Consumer` calls its handler once per message; billing wants one SQL transaction per
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

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from shared.bus import Bus
from shared.contracts.subjects import jetstream_next_subject

log = logging.getLogger(__name__)

BatchHandler = Callable[[list[Msg]], Awaitable[Iterable[Msg]]]


class BatchConsumer:
    def __init__(
        self,
        bus: Bus,
        stream: str,
        durable: str,
        handler: BatchHandler,
        *,
        filter_subject: str | None = None,
        batch: int = 1000,
        ack_wait: float = 15.0,
        max_ack_pending: int = 20_000,
        fetch_timeout: float = 1.0,
        nak_delay: float = 1.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.bus = bus
        self.stream = stream
        self.durable = durable
        self.handler = handler
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.nak_delay = nak_delay
        self.stop_timeout = stop_timeout
        self.config = ConsumerConfig(
            name=durable, durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait,
            max_deliver=-1, deliver_policy=DeliverPolicy.ALL, filter_subject=filter_subject,
            max_ack_pending=max_ack_pending,
        )
        self.linger = 0.005  # seconds without a new delivery that end a batch early
        self._next_subject = jetstream_next_subject(stream, durable)
        self._sub: object | None = None
        self._inbox = ""
        self._buffer: list[Msg] = []
        self._arrived = asyncio.Event()
        self._answered = False
        self._lost = False
        self._request_no = 0
        self._inflight: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._busy = False
        self._idle = asyncio.Event()
        self._idle.set()
        # counters for health checks, tests and the benchmark
        self.batches = 0
        self.acked = 0
        self.naked = 0
        self.termed = 0
        self.fetch_errors = 0

    def __repr__(self) -> str:
        return f"BatchConsumer({self.stream}/{self.durable})"

    async def start(self) -> BatchConsumer:
        await self._bind()
        self._task = asyncio.create_task(self._run(), name=f"batch-consumer:{self.stream}:{self.durable}")
        log.info("consumer %s/%s started (batch %d)", self.stream, self.durable, self.batch)
        return self

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._busy:  # a batch is being applied: let it commit and be acked
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.stop_timeout)
        await self._unbind()
        leftover, self._buffer = self._buffer, []
        for msg in leftover:  # received, never applied: back to the stream for the next process
            with contextlib.suppress(Exception):
                await msg.nak()
        if self.bus.nc.is_connected:
            with contextlib.suppress(Exception):
                await self.bus.nc.flush(timeout=2)
        log.info("consumer %s/%s stopped", self.stream, self.durable)

    async def _bind(self) -> None:
        """Create (or keep) the durable and subscribe our private inbox for its deliveries."""
        await self._unbind()
        try:
            await self.bus.js.add_consumer(self.stream, config=self.config)
        except nats.js.errors.BadRequestError as exc:
            log.warning("consumer %s/%s kept as is: %s", self.stream, self.durable, exc.description)
        self._inbox = self.bus.nc.new_inbox()
        self._sub = await self.bus.nc.subscribe(self._inbox + ".*", cb=self._on_delivery)

    async def _unbind(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # type: ignore[attr-defined]

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
        request = json.dumps({"batch": self.batch, "expires": int(self.fetch_timeout * 1e9)}).encode()
        self._answered = False
        await self.bus.nc.publish(self._next_subject, request, reply=f"{self._inbox}.{self._request_no}")

    async def _collect(self) -> None:
        """Wait for the first delivery (or the request's end), then briefly for the rest of it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.fetch_timeout + 1.0
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

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                if self._sub is None or self._lost:
                    self._lost = False
                    await self._bind()
                if not self._buffer:
                    await self._pull()
                await self._collect()
            except nats.errors.ConnectionClosedError:
                return
            except Exception as exc:  # no answer (reconnecting, server restart) or a bind error
                self.fetch_errors += 1
                log.warning("consumer %s/%s: pull failed (%s: %s); retrying in %.1fs", self.stream, self.durable,
                            type(exc).__name__, exc, backoff)
                await self._unbind()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if not self._buffer:
                continue
            # deliveries of a request still open keep arriving into the buffer: the next round
            msgs, self._buffer = self._buffer[:self.batch], self._buffer[self.batch:]
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
            log.exception("consumer %s/%s: batch of %d failed; redelivery in %.1fs", self.stream, self.durable,
                          len(msgs), self.nak_delay)
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=self.nak_delay)
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
