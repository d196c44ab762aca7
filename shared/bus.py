"""The message bus: a small asyncio adapter over nats-py that every service uses.

* `Bus.connect()` retries with bounded exponential backoff, then keeps the connection alive with
  nats-py's own reconnect loop; services register `on_disconnect` / `on_reconnect` hooks.
* `ensure_streams()` creates or updates the per-DC JetStream streams declared in `STREAMS`
  (`EVENTS_<DC>` on `events.<dc>.>`, `USAGE_<DC>`, `BILLING_<DC>`, `TELEMETRY_<DC>`) and, given
  the mesh's DCs, `REPLICA_<DC>` sourcing all their events (`shared.replication`).
* `publish_event()` publishes an `Envelope` to JetStream with `Nats-Msg-Id` = event id (the stream
  drops duplicates within its window) and retries transient failures; `publish_event_nowait()`
  queues it in a bounded, ordered outbox that is flushed in the background (and after a reconnect).
* Core NATS: `publish` / `subscribe`, and request/reply with `request` / `serve`; a failing
  `serve` handler answers with a `Meshrtc-Error` header, raised as `RemoteError` by `request`.
* `consume()` / `consume_raw()` run durable pull consumers (see `shared.bus_consumer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)
from tenacity.stop import stop_base

from shared.bus_consumer import (
    Consumer,
    ConsumerSettings,
    EventHandler,
    MsgMeta,
    RawHandler,
    event_handler_adapter,
)
from shared.contracts.subjects import check_dc, event_subject, stream_name, stream_subjects
from shared.errors import BusError
from shared.events import Envelope
from shared.replication import ensure_replica, replica_stream

__all__ = [
    "ERROR_HEADER",
    "STREAMS",
    "Bus",
    "BusTimeout",
    "BusUnavailable",
    "Consumer",
    "MsgMeta",
    "OutboxFull",
    "PublishAck",
    "RemoteError",
    "StreamSpec",
    "register_stream",
]

log = logging.getLogger("meshrtc.bus")

ERROR_HEADER = "Meshrtc-Error"
MSG_ID_HEADER = "Nats-Msg-Id"
DAY = 86_400.0
T = TypeVar("T")

Hook = Callable[[], Awaitable[None] | None]
MsgHandler = Callable[[Msg], Awaitable[None]]
RequestHandler = Callable[[bytes], Awaitable[bytes]]


class BusUnavailable(BusError, RuntimeError):
    """NATS cannot be reached (or the bus is closed)."""


class OutboxFull(BusUnavailable):
    """The outbox holds `outbox_limit` events not yet accepted by NATS."""


class BusTimeout(BusError, TimeoutError):
    """No (acknowledged) answer in time: request without reply/responders, unacked publish."""


class NoResponders(BusTimeout):
    """Nobody subscribes to the subject: for a per-node subject, that node's bus connection is gone."""


class RemoteError(BusError, RuntimeError):
    """The handler behind `serve()` raised; the message is the remote error."""

    def __init__(self, subject: str, message: str) -> None:
        super().__init__(message)
        self.subject = subject
        self.message = message


# Errors worth retrying: they happen while the connection or JetStream is (re)starting.
_TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    asyncio.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
)
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (OSError, nats.errors.Error, asyncio.TimeoutError)


def redact_url(url: str) -> str:
    """The URL without credentials, for logs and error messages."""
    out = []
    for one in url.split(","):
        one = one.strip()
        try:
            netloc = urlsplit(one).netloc
        except ValueError:
            out.append(one)
            continue
        if "@" in netloc:
            one = one.replace(netloc, "***@" + netloc.rsplit("@", 1)[1], 1)
        out.append(one)
    return ",".join(out)


# ---------------------------------------------------------------------------------------------
# Streams


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One per-DC stream: `<KIND>_<DC>` capturing `<kind>.<dc>.>`."""

    kind: str
    max_age: float  # seconds
    duplicate_window: float = 120.0  # seconds; Nats-Msg-Id dedupe window
    storage: StorageType = StorageType.FILE
    max_bytes: int = -1
    description: str = ""

    def name(self, dc: str) -> str:
        return stream_name(self.kind, dc)

    def subjects(self, dc: str) -> list[str]:
        return stream_subjects(self.kind, dc)

    def config(self, dc: str) -> StreamConfig:
        return StreamConfig(
            name=self.name(dc),
            description=self.description or None,
            subjects=self.subjects(dc),
            retention=RetentionPolicy.LIMITS,
            storage=self.storage,
            max_age=self.max_age,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window,
            discard=DiscardPolicy.OLD,
            num_replicas=1,
        )


STREAMS: list[StreamSpec] = [
    StreamSpec("events", max_age=7 * DAY, description="room, participant, track, node and link events"),
    StreamSpec("usage", max_age=7 * DAY, description="usage samples (metering)"),
    StreamSpec("billing", max_age=30 * DAY, description="billing rollups"),
    StreamSpec("telemetry", max_age=1 * DAY, duplicate_window=60.0, description="telemetry"),
]


def register_stream(spec: StreamSpec) -> StreamSpec:
    """Declare one more per-DC stream for `ensure_streams()` (idempotent for an identical spec)."""
    for existing in STREAMS:
        if existing.kind == spec.kind:
            if existing != spec:
                raise ValueError(f"stream kind {spec.kind!r} already declared differently: {existing}")
            return existing
    STREAMS.append(spec)
    return spec


_COMPARED_FIELDS = (
    "retention", "storage", "max_age", "max_bytes", "duplicate_window", "discard", "num_replicas",
)


def _config_diff(current: StreamConfig, desired: StreamConfig) -> dict[str, tuple[object, object]]:
    diff: dict[str, tuple[object, object]] = {}
    if sorted(current.subjects or []) != sorted(desired.subjects or []):
        diff["subjects"] = (current.subjects, desired.subjects)
    if (current.description or None) != (desired.description or None):
        diff["description"] = (current.description, desired.description)
    for name in _COMPARED_FIELDS:
        have, want = getattr(current, name), getattr(desired, name)
        if want is not None and have != want:
            diff[name] = (have, want)
    return diff


# ---------------------------------------------------------------------------------------------
# Publishing


class PublishAck(int):
    """The stream sequence of a JetStream publish (an int), plus `.stream` and `.duplicate`.

    `duplicate` is True when the stream already held a message with this `Nats-Msg-Id`: nothing
    was stored, and the sequence is the one of the original message.
    """

    stream: str
    duplicate: bool

    def __new__(cls, seq: int, stream: str = "", duplicate: bool = False) -> PublishAck:
        obj = super().__new__(cls, seq)
        obj.stream = stream
        obj.duplicate = duplicate
        return obj

    def __repr__(self) -> str:
        return f"PublishAck(seq={int(self)}, stream={self.stream!r}, duplicate={self.duplicate})"


@dataclass(frozen=True, slots=True)
class _Outgoing:
    subject: str
    data: bytes
    msg_id: str


def _header_safe(text: str, limit: int = 1024) -> str:
    return " ".join(text.split())[:limit] or "error"


# ---------------------------------------------------------------------------------------------
# The bus


class Bus:
    """One NATS connection of one service instance. Create it with `await Bus.connect(...)`."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        dc: str,
        node: str,
        publish_timeout: float = 10.0,
        outbox_limit: int = 10_000,
    ) -> None:
        self.url = redact_url(url)
        self._servers = [s.strip() for s in url.split(",") if s.strip()]
        self.name = name
        self.dc = check_dc(dc)
        self.node = node
        self.publish_timeout = publish_timeout
        self.outbox_limit = outbox_limit
        self.outbox_dropped = 0  # events NATS refused for good (logged as errors)
        self._nc = NatsClient()  # replaced by the connected client in _connect()
        self._js: JetStreamContext | None = None
        self._last_error: Exception | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._disconnect_hooks: list[Hook] = []
        self._reconnect_hooks: list[Hook] = []
        self._background: set[asyncio.Task[None]] = set()
        self._consumers: set[Consumer] = set()
        self._outbox: deque[_Outgoing] = deque()
        self._outbox_wakeup = asyncio.Event()
        self._outbox_empty = asyncio.Event()
        self._outbox_empty.set()
        self._outbox_task: asyncio.Task[None] | None = None

    # -- connection ----------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str,
        dc: str,
        node: str,
        connect_timeout: float = 10.0,
        attempts: int | None = None,
        reconnect_wait: float = 0.5,
        publish_timeout: float = 10.0,
        outbox_limit: int = 10_000,
    ) -> Bus:
        """Connect, retrying for up to `connect_timeout` seconds (and/or `attempts` tries).

        Raises BusUnavailable if NATS is still unreachable. Once connected, nats-py reconnects
        forever (every `reconnect_wait` seconds) and the hooks report the outages.
        """
        bus = cls(url, name=name, dc=dc, node=node, publish_timeout=publish_timeout,
                  outbox_limit=outbox_limit)
        await bus._connect(connect_timeout, attempts, reconnect_wait)
        return bus

    async def _connect(self, connect_timeout: float, attempts: int | None, reconnect_wait: float) -> None:
        started = time.monotonic()
        stop: stop_base = stop_after_delay(connect_timeout)
        if attempts:
            stop = stop | stop_after_attempt(attempts)
        tries = 0
        backoff = wait_exponential(multiplier=0.1, max=2.0)

        def wait(state: RetryCallState) -> float:  # backoff, but never past the deadline
            return max(0.0, min(backoff(state), connect_timeout - (time.monotonic() - started)))

        def log_retry(state: RetryCallState) -> None:
            log.warning("NATS at %s not reachable yet (attempt %d); retrying", self.url, tries)

        try:
            async for attempt in AsyncRetrying(
                stop=stop,
                wait=wait,
                retry=retry_if_exception_type(_CONNECT_ERRORS),
                before_sleep=log_retry,
                reraise=True,
            ):
                with attempt:
                    tries += 1
                    remaining = connect_timeout - (time.monotonic() - started)
                    nc = NatsClient()
                    await nc.connect(
                        servers=self._servers,
                        name=self.name,
                        # nats-py annotates both as int, but only hands them to asyncio.wait_for
                        # and asyncio.sleep, which take seconds as floats.
                        connect_timeout=max(0.2, min(2.0, remaining)),  # type: ignore[arg-type]
                        # bounded for this first connect (nats-py would loop forever on -1; with 1
                        # it tries twice); tenacity does the backing off ...
                        reconnect_time_wait=0.05,  # type: ignore[arg-type]
                        max_reconnect_attempts=1,
                        allow_reconnect=True,
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                        closed_cb=self._on_closed,
                    )
        except _CONNECT_ERRORS as exc:
            elapsed = time.monotonic() - started
            cause = self._last_error or exc
            detail = f"{type(cause).__name__}: {cause}".rstrip(": ")
            raise BusUnavailable(
                f"cannot reach NATS at {self.url} after {tries} attempt(s) in {elapsed:.1f}s ({detail}); "
                "is nats-server running there? Set MESHRTC_NATS_URL to the bus address "
                "(e.g. nats://127.0.0.1:4222)"
            ) from exc
        # ... then unbounded: an established bus never gives up reconnecting.
        nc.options["max_reconnect_attempts"] = -1
        nc.options["reconnect_time_wait"] = reconnect_wait
        self._nc = nc
        self._js = nc.jetstream()
        self._connected.set()
        log.info("connected to NATS %s as %s (dc=%s node=%s)", self.url, self.name, self.dc, self.node)

    @property
    def nc(self) -> NatsClient:
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise BusUnavailable(f"bus to {self.url} is not connected (MESHRTC_NATS_URL)")
        return self._js

    @property
    def is_connected(self) -> bool:
        return self._nc.is_connected

    def on_disconnect(self, hook: Hook) -> Hook:
        """Call `hook()` (sync or async) whenever the connection is lost. Usable as a decorator."""
        self._disconnect_hooks.append(hook)
        return hook

    def on_reconnect(self, hook: Hook) -> Hook:
        """Call `hook()` (sync or async) whenever the connection is re-established."""
        self._reconnect_hooks.append(hook)
        return hook

    async def _on_error(self, exc: Exception) -> None:
        if self._connected.is_set():
            log.warning("NATS %s: %s: %s", self.url, type(exc).__name__, exc)
        else:
            # failed (re)connect attempts: the disconnect and reconnect are logged once each
            self._last_error = exc
            log.debug("NATS %s connect error: %s: %s", self.url, type(exc).__name__, exc)

    async def _on_disconnected(self) -> None:
        if self._js is None or not self._connected.is_set():
            return
        self._connected.clear()
        if self._closing:
            return
        log.warning("lost connection to NATS %s; reconnecting", self.url)
        self._spawn(self._run_hooks(self._disconnect_hooks, "disconnect"))

    async def _on_reconnected(self) -> None:
        self._connected.set()
        server = self._nc.connected_url
        log.info("reconnected to NATS %s (%s)", self.url, redact_url(server.geturl()) if server else "?")
        self._outbox_wakeup.set()
        self._spawn(self._run_hooks(self._reconnect_hooks, "reconnect"))

    async def _on_closed(self) -> None:
        if self._js is not None:
            log.info("NATS connection to %s closed", self.url)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_hooks(self, hooks: list[Hook], what: str) -> None:
        # run outside nats-py's callback so a slow hook cannot stall the reconnect machinery
        for hook in list(hooks):
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("bus %s hook %r failed", what, hook)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop consumers, flush the outbox (up to `timeout` s), drain and close the connection."""
        if self._closing:
            return
        self._closing = True
        for consumer in list(self._consumers):
            await consumer.stop()
        self._consumers.clear()
        if self._outbox and self.is_connected:
            with contextlib.suppress(BusTimeout):
                await self.flush_outbox(timeout)
        if self._outbox:
            log.error("closing the bus with %d unpublished event(s) in the outbox", len(self._outbox))
        if self._outbox_task is not None:
            self._outbox_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._outbox_task
        try:
            if self._nc.is_connected:
                await self._nc.drain()
            else:
                await self._nc.close()
        except Exception as exc:
            log.warning("NATS drain failed (%s); closing", exc)
            with contextlib.suppress(Exception):
                await self._nc.close()

    # -- streams -------------------------------------------------------------------------------

    async def ensure_streams(
        self, specs: Iterable[StreamSpec] | None = None, *, datacenters: Sequence[str] | None = None
    ) -> dict[str, str]:
        """Create or update this DC's streams; returns {stream name: created|updated|unchanged}.

        With `datacenters` (the mesh, MESHRTC_DATACENTERS) also `REPLICA_<DC>`, which sources
        the events of every one of them (`shared.replication`); `[own dc]` for a single DC.
        """
        result: dict[str, str] = {}
        for spec in STREAMS if specs is None else specs:
            desired = spec.config(self.dc)
            assert desired.name is not None
            result[desired.name] = await self._retrying(functools.partial(self._ensure_stream, desired))
        if datacenters is not None:
            result[replica_stream(self.dc)] = await self._retrying(
                lambda: ensure_replica(self.js, self.dc, datacenters))
        return result

    async def _ensure_stream(self, desired: StreamConfig) -> str:
        try:
            info = await self.js.stream_info(desired.name or "")
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(desired)
            log.info("created stream %s on %s", desired.name, desired.subjects)
            return "created"
        diff = _config_diff(info.config, desired)
        if not diff:
            return "unchanged"
        log.info("updating stream %s: %s", desired.name,
                 ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()))
        await self.js.update_stream(desired)
        return "updated"

    async def _retrying(self, call: Callable[[], Awaitable[T]], within: float | None = None) -> T:
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(self.publish_timeout if within is None else within),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            retry=retry_if_exception_type(_TRANSIENT),
            reraise=True,
        ):
            with attempt:
                return await call()
        raise AssertionError("unreachable")  # pragma: no cover

    # -- JetStream publishing ------------------------------------------------------------------

    async def publish_event(
        self, env: Envelope, subject: str | None = None, *, timeout: float | None = None
    ) -> PublishAck:
        """Publish to JetStream (dedupe by event id) and return the stream sequence.

        Retries timeouts / missing responders (reconnects, JetStream restarting) for up to
        `timeout` (default `publish_timeout`) seconds, then raises BusTimeout.
        """
        subject = subject or event_subject(env.dc, env.type, env.room)
        return await self.publish_js(subject, env.to_json(), msg_id=env.id, timeout=timeout)

    async def publish_js(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> PublishAck:
        """Raw-bytes JetStream publish with `Nats-Msg-Id` = msg_id (see publish_event)."""
        total = self.publish_timeout if timeout is None else timeout
        deadline = time.monotonic() + total
        hdrs = {**(headers or {}), MSG_ID_HEADER: msg_id}

        async def once() -> PublishAck:
            per_try = max(0.1, min(2.0, deadline - time.monotonic()))
            ack = await self.js.publish(subject, data, timeout=per_try, headers=dict(hdrs))
            return PublishAck(ack.seq, ack.stream, bool(ack.duplicate))

        try:
            return await self._retrying(once, total)
        except _TRANSIENT as exc:
            raise BusTimeout(
                f"publish of {msg_id} on {subject} not acknowledged within {total:.1f}s "
                f"({type(exc).__name__}; NATS {self.url} down, or no stream captures the subject?)"
            ) from exc

    def publish_event_nowait(self, env: Envelope, subject: str | None = None) -> None:
        """Queue the event in the outbox; a background task publishes it, in order, with retries.

        Survives NATS outages and restarts (flushed after the reconnect). Queued events keep their
        order among themselves (an awaited publish_event may overtake them). Raises OutboxFull
        when `outbox_limit` events are already waiting.
        """
        if self._closing:
            raise BusUnavailable(f"bus to {self.url} is closed")
        if len(self._outbox) >= self.outbox_limit:
            raise OutboxFull(
                f"outbox full: {len(self._outbox)} events waiting for NATS at {self.url} (MESHRTC_NATS_URL)"
            )
        subject = subject or event_subject(env.dc, env.type, env.room)
        self._outbox.append(_Outgoing(subject, env.to_json(), env.id))
        self._outbox_empty.clear()
        self._outbox_wakeup.set()
        if self._outbox_task is None or self._outbox_task.done():
            self._outbox_task = asyncio.create_task(self._outbox_loop(), name="bus-outbox")

    @property
    def outbox_size(self) -> int:
        return len(self._outbox)

    async def flush_outbox(self, timeout: float | None = None) -> None:
        """Wait until every queued event is acknowledged by JetStream (BusTimeout after timeout)."""
        try:
            await asyncio.wait_for(self._outbox_empty.wait(), timeout)
        except TimeoutError:
            raise BusTimeout(f"{len(self._outbox)} event(s) still in the outbox after {timeout}s") from None

    async def _outbox_loop(self) -> None:
        backoff = 0.05
        failing = False
        while True:
            if not self._outbox:
                self._outbox_empty.set()
                self._outbox_wakeup.clear()
                await self._outbox_wakeup.wait()
                continue
            await self._connected.wait()
            item = self._outbox[0]
            try:
                headers = {MSG_ID_HEADER: item.msg_id}
                await self.js.publish(item.subject, item.data, timeout=2.0, headers=headers)
            except _TRANSIENT as exc:
                if not failing:
                    log.warning("outbox: publish failed (%s), %d event(s) waiting; retrying",
                                type(exc).__name__, len(self._outbox))
                failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            except nats.errors.ConnectionClosedError:
                log.error("outbox: bus closed with %d event(s) unpublished", len(self._outbox))
                return
            except Exception as exc:
                self.outbox_dropped += 1
                log.error("outbox: NATS refused event %s on %s (%s: %s); dropped",
                          item.msg_id, item.subject, type(exc).__name__, exc)
            if failing:
                log.info("outbox: publishing again, %d event(s) waiting", len(self._outbox) - 1)
                failing = False
            backoff = 0.05
            self._outbox.popleft()

    # -- core NATS -----------------------------------------------------------------------------

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        """Fire-and-forget core NATS publish (buffered by nats-py while reconnecting)."""
        await self._nc.publish(subject, data, headers=headers)

    async def subscribe(self, subject: str, handler: MsgHandler, queue: str | None = None) -> Subscription:
        """Subscribe `async def handler(msg)`; its exceptions are logged, the subscription goes on."""

        async def callback(msg: Msg) -> None:
            try:
                await handler(msg)
            except Exception:
                log.exception("subscription handler for %s failed on %s", subject, msg.subject)

        return await self._nc.subscribe(subject, queue=queue or "", cb=callback)

    async def request(
        self,
        subject: str,
        data: bytes,
        timeout: float = 2.0,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        """Request/reply. BusTimeout on timeout or no responders, RemoteError if the handler raised."""
        try:
            msg = await self._nc.request(subject, data, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise NoResponders(f"no responders on {subject}") from None
        except TimeoutError:  # nats.errors.TimeoutError is one too
            raise BusTimeout(f"no reply on {subject} within {timeout}s") from None
        if msg.headers and ERROR_HEADER in msg.headers:
            raise RemoteError(subject, msg.headers[ERROR_HEADER])
        return msg.data

    async def serve(
        self,
        subject: str,
        handler: RequestHandler,
        queue: str | None = None,
        *,
        concurrency: int = 1,
    ) -> Subscription:
        """Answer requests with `async def handler(data) -> bytes`.

        An exception in the handler is logged and answered with an empty body and header
        `Meshrtc-Error: <Type>: <message>`. `concurrency` > 1 handles that many requests at once
        (default: one at a time, in arrival order).
        """
        limit = asyncio.Semaphore(max(1, concurrency))

        async def answer(msg: Msg) -> None:
            headers: dict[str, str] | None = None
            try:
                reply = await handler(msg.data)
            except Exception as exc:
                log.exception("request handler for %s failed", subject)
                reply, headers = b"", {ERROR_HEADER: _header_safe(f"{type(exc).__name__}: {exc}")}
            if msg.reply:
                try:
                    await self._nc.publish(msg.reply, reply, headers=headers)
                except Exception as exc:
                    log.warning("could not reply on %s: %s", subject, exc)

        async def callback(msg: Msg) -> None:
            if concurrency <= 1:
                await answer(msg)
                return
            await limit.acquire()
            task = asyncio.create_task(answer(msg))
            task.add_done_callback(lambda _t: limit.release())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        return await self._nc.subscribe(subject, queue=queue or "", cb=callback)

    # -- durable consumers ---------------------------------------------------------------------

    async def consume(
        self,
        stream: str,
        durable: str,
        handler: EventHandler,
        *,
        filter_subject: str | None = None,
        settings: ConsumerSettings = ConsumerSettings(),
    ) -> Consumer:
        """Run `async def handler(env, meta)` over a durable pull consumer; returns it running.

        Ack after the handler returns; nak with backoff if it raises; term undecodable messages.
        """
        return await self.consume_raw(
            stream, durable, event_handler_adapter(handler), filter_subject=filter_subject, settings=settings)

    async def consume_raw(
        self,
        stream: str,
        durable: str,
        handler: RawHandler,
        *,
        filter_subject: str | None = None,
        settings: ConsumerSettings = ConsumerSettings(),
    ) -> Consumer:
        """Like consume() with `async def handler(data: bytes, meta)`; raising EventDecodeError terms."""
        consumer = Consumer(self._nc, self.js, stream, durable, handler, filter_subject=filter_subject,
                            settings=settings)
        await self._retrying(consumer.start)
        self._consumers.add(consumer)
        return consumer
