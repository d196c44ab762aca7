"""Durable JetStream pull consumers for the bus (see `shared.bus.Bus.consume`).

One `Consumer` is one fetch loop over one durable consumer:

* the handler runs once per message, in stream order; the message is acked explicitly after the
  handler returns;
* a handler exception naks the message with a growing delay, so it is redelivered later;
* `EventDecodeError` (garbage bytes, unknown event types) terms the message: it is logged and never
  redelivered, so garbage cannot block the stream;
* `stop()` cancels the loop; the message being handled and the rest of the fetched batch are naked
  so the next consumer bound to the same durable gets them at once (not after `ack_wait`);
* any fetch error (server restart, consumer lost, reconnect) is logged and retried with backoff;
  the durable is re-bound (created if missing) before the next fetch.

Delivery is at least once: handlers must be idempotent (remember what they applied).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, Self

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from shared.events import Envelope, EventDecodeError

log = logging.getLogger("meshrtc.bus")


@dataclass(frozen=True, slots=True)
class MsgMeta:
    """Where a delivered message sits in its stream."""

    stream: str
    consumer: str
    subject: str
    stream_seq: int
    consumer_seq: int
    num_delivered: int  # 1 on first delivery, >1 for redeliveries
    num_pending: int
    timestamp: dt.datetime
    headers: dict[str, str]

    @classmethod
    def from_msg(cls, msg: Msg) -> MsgMeta:
        md = msg.metadata
        return cls(
            stream=md.stream,
            consumer=md.consumer,
            subject=msg.subject,
            stream_seq=md.sequence.stream,
            consumer_seq=md.sequence.consumer,
            num_delivered=md.num_delivered,
            num_pending=md.num_pending,
            timestamp=md.timestamp,
            headers=dict(msg.headers or {}),
        )


RawHandler = Callable[[bytes, MsgMeta], Awaitable[None]]
EventHandler = Callable[[Envelope, MsgMeta], Awaitable[None]]


def event_handler_adapter(handler: EventHandler) -> RawHandler:
    """Decode the envelope (EventDecodeError -> the consumer terms the message), then call handler."""

    async def handle(data: bytes, meta: MsgMeta) -> None:
        await handler(Envelope.from_json(data), meta)

    return handle


class _Unsubscribable(Protocol):
    async def unsubscribe(self) -> None: ...


async def unsubscribe_quietly(sub: _Unsubscribable | JetStreamContext.PullSubscription | None) -> None:
    """Drop a pull subscription; a connection that is already gone has dropped it anyway."""
    if sub is not None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


_FETCH_IDLE = (nats.errors.TimeoutError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """How one durable pull consumer is set up on the server and paced here.

    The defaults are the per-message event consumer's (`Bus.consume`); billing's batch consumers
    and the webhook worker's ordered one configure their own (`services.billing.consumer`,
    `services.room.webhooks`).
    """

    batch: int = 64  # messages per pull
    ack_wait: float = 30.0  # seconds the server waits for an ack before it redelivers
    max_deliver: int = -1  # deliveries before the server gives a message up; -1: never (handlers are idempotent)
    max_ack_pending: int | None = None  # unacked messages out at once; None: the server's default
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL  # where a new durable starts (an existing one keeps its own)
    fetch_timeout: float = 5.0  # seconds one pull waits for messages
    nak_base_delay: float = 0.5  # redelivery delay after a failed handler; doubles per delivery...
    nak_max_delay: float = 30.0  # ...up to this

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError("batch must be >= 1")

    def nak_delay(self, num_delivered: int) -> float:
        """How long a message that failed on its `num_delivered`-th delivery waits to come back."""
        return min(self.nak_max_delay, self.nak_base_delay * 2 ** (num_delivered - 1))

    def consumer_config(self, durable: str, filter_subject: str | None) -> ConsumerConfig:
        return ConsumerConfig(
            name=durable,
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            deliver_policy=self.deliver_policy,
            filter_subject=filter_subject,
        )


class PullConsumer:
    """What every durable pull consumer here shares: the durable is created (or kept) on bind,
    a loop pulls batches and hands them to `_dispatch`, pull errors are counted, logged and
    retried with backoff after a re-bind, and `stop()` ends the loop. Subclasses say how they
    subscribe (`_subscribe`), pull (`_pull_batch`) and handle what they pulled (`_dispatch`)."""

    def __init__(self, nc: NatsClient, js: JetStreamContext, stream: str, durable: str, *,
                 filter_subject: str | None, settings: ConsumerSettings) -> None:
        self._nc = nc
        self._js = js
        self.stream = stream
        self.durable = durable
        self.filter_subject = filter_subject
        self.settings = settings
        self._config = settings.consumer_config(durable, filter_subject)
        self._sub: _Unsubscribable | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # counters, handy for health endpoints and tests
        self.acked = 0
        self.naked = 0
        self.termed = 0
        self.fetch_errors = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.stream}/{self.durable})"

    @property
    def batch(self) -> int:
        return self.settings.batch

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> Self:
        """Create (or update) the durable, bind to it and start the pull loop."""
        await self._bind()
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.stream}:{self.durable}")
        log.info("consumer %s/%s started (filter=%s, batch %d)", self.stream, self.durable, self.filter_subject,
                 self.batch)
        return self

    async def stop(self) -> None:
        """Cancel the pull loop; what was pulled and not handled goes back for redelivery."""
        if self._stopping:
            return
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._finish_handling()
        await self._unbind()
        await self._release_unhandled()
        if self._nc.is_connected:
            # push the last acks/naks to the server before the caller moves on
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=2)
        log.info("consumer %s/%s stopped", self.stream, self.durable)

    # -- for subclasses ------------------------------------------------------------------------

    async def _subscribe(self) -> _Unsubscribable:
        raise NotImplementedError

    async def _pull_batch(self) -> list[Msg]:
        """The next messages; [] when there were none. Raising counts as a pull error."""
        raise NotImplementedError

    async def _dispatch(self, msgs: list[Msg]) -> None:
        raise NotImplementedError

    async def _finish_handling(self) -> None:
        """On stop, after the loop is cancelled: let handling that must not be cut short end."""

    async def _release_unhandled(self) -> None:
        """On stop: give back messages pulled and never handled."""

    # -- internals -----------------------------------------------------------------------------

    async def _bind(self) -> None:
        await self._unbind()
        try:
            await self._js.add_consumer(self.stream, config=self._config)
        except nats.js.errors.BadRequestError as exc:
            # exists with a config that cannot be changed in place (e.g. deliver_policy): keep it
            log.warning("consumer %s/%s kept as is: %s", self.stream, self.durable, exc.description)
        self._sub = await self._subscribe()

    async def _unbind(self) -> None:
        sub, self._sub = self._sub, None
        await unsubscribe_quietly(sub)

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                msgs = await self._pull_batch()
            except nats.errors.ConnectionClosedError:
                log.info("consumer %s/%s: bus closed, stopping", self.stream, self.durable)
                return
            except Exception as exc:
                self.fetch_errors += 1
                log.warning(
                    "consumer %s/%s: fetch failed (%s: %s); retrying in %.1fs",
                    self.stream, self.durable, type(exc).__name__, exc, backoff,
                )
                await self._unbind()  # re-bind (and re-create the durable if it was lost) next time
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if msgs:
                await self._dispatch(msgs)


class Consumer(PullConsumer):
    """A running fetch loop over one durable pull consumer, one handler call per message.
    Create it with `Bus.consume*`."""

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        stream: str,
        durable: str,
        handler: RawHandler,
        *,
        filter_subject: str | None = None,
        settings: ConsumerSettings = ConsumerSettings(),
    ) -> None:
        super().__init__(nc, js, stream, durable, filter_subject=filter_subject, settings=settings)
        self._handler = handler
        self._pull_sub: JetStreamContext.PullSubscription | None = None

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        self._pull_sub = await self._js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        return self._pull_sub

    async def _pull_batch(self) -> list[Msg]:
        try:
            if self._sub is None:
                await self._bind()
            assert self._pull_sub is not None
            return await self._pull_sub.fetch(self.batch, timeout=self.settings.fetch_timeout)
        except _FETCH_IDLE:
            return []  # nothing to do (or a pull lost in a reconnect): pull again

    async def _dispatch(self, msgs: list[Msg]) -> None:
        await self._handle_batch(msgs)

    async def _handle_batch(self, msgs: list[Msg]) -> None:
        for index, msg in enumerate(msgs):
            try:
                await self._handle(msg)
            except asyncio.CancelledError:
                # stop() mid-batch: give back what we did not finish so it is redelivered promptly
                for pending in msgs[index:]:
                    with contextlib.suppress(Exception):
                        await pending.nak()
                raise

    async def _handle(self, msg: Msg) -> None:
        try:
            meta = MsgMeta.from_msg(msg)
        except Exception:
            log.warning("consumer %s/%s: not a JetStream message on %s; dropped", self.stream,
                        self.durable, msg.subject)
            return
        try:
            await self._handler(msg.data, meta)
        except EventDecodeError as exc:
            self.termed += 1
            log.warning(
                "consumer %s/%s: terminating undecodable message seq=%d subject=%s: %s (data=%r)",
                self.stream, self.durable, meta.stream_seq, meta.subject, exc, msg.data[:200],
            )
            await msg.term()
            return
        except Exception:
            delay = self.settings.nak_delay(meta.num_delivered)
            self.naked += 1
            log.exception(
                "consumer %s/%s: handler failed on seq=%d (delivery %d); redelivery in %.1fs",
                self.stream, self.durable, meta.stream_seq, meta.num_delivered, delay,
            )
            await msg.nak(delay=delay)
            return
        await msg.ack()
        self.acked += 1
