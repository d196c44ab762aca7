"""Durable webhooks: LiveKit's `WebhookEvent`s, derived from our events, POSTed in order, never dropped.

Mapping (`to_webhook`, pure): each webhook comes from one event of the DC's REPLICA stream (every
DC's events, `shared.replication`), read against the room state *before* that event
(`services.room.state.RoomRegistry`, the same fold the room service keeps):

    room.created        -> room_started
    room.finished       -> room_finished
    participant.active  -> participant_joined  (LiveKit sends it when the participant is active)
    participant.left    -> participant_left, or participant_connection_aborted if it never was active
    track.published     -> track_published
    track.unpublished   -> track_unpublished

The webhook `id` is `"EV_" + <event id>`: stable, so a receiver can dedupe and a replay carries the
same id. `created_at` is the event time in unix seconds. The body is protobuf JSON with LiveKit's
lowerCamelCase names (`google.protobuf.json_format`, int64 as strings), sent with `Content-Type:
application/webhook+json` and `Authorization: <bare JWT>` signed with the first API key (claim
`sha256` = base64 SHA-256 of the body), which `livekit.api.WebhookReceiver` verifies.

Across DCs each webhook is sent once, by the DC where its event originated (`env.dc`); the other
DCs' events only feed the room state. A room created concurrently in two DCs therefore sends two
room_started (one per creation, with different sids) and one room_finished (docs/multi-dc.md).

Delivery (`WebhookWorker`, one per configured URL): a durable pull consumer on the REPLICA stream
(durable `webhook-<hash of the URL>`, one message in flight, kept from redelivery while it is
handled; after a crash it is redelivered once its `ack_wait`, 15 s, has run out) folds
every event into its own room state and POSTs each webhook in stream order. A receiver that is down
or answers non-2xx is retried with exponential backoff (capped at `max_backoff`, 10 s) *forever*:
the message is not acked, so nothing behind it is sent either. Per room (indeed per DC) webhooks
therefore arrive in order, and none is dropped (LiveKit drops them when its queue is full).

Each delivery is recorded in `webhook_deliveries` (URL hash, webhook id, room, event, time) and a
webhook already recorded for a URL is skipped, so a restart does not resend what was delivered.
This is at-least-once, not exactly-once: a crash after the receiver accepted a POST but before the
delivery is recorded (or the message acked) resends that one webhook, with the same id. Receivers
dedupe by `id`.

`replay()` (behind `meshrtc webhooks replay`) re-sends, with the same ids and the same mapping and
signing, every webhook derived from events in the SQL event store since a given time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import httpx
import nats.js.errors
from google.protobuf.json_format import MessageToJson
from google.protobuf.message import DecodeError
from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_exponential,
)

from shared.auth import sign_webhook
from shared.bus import Bus
from shared.bus_consumer import Consumer, ConsumerSettings, MsgMeta, RawHandler, event_handler_adapter
from shared.errors import RoomError
from shared.event_fold import FoldDispatch
from shared.events import (
    Envelope,
    LinkStateChanged,
    NodeDown,
    NodeHeartbeat,
    NodeUp,
    ParticipantActive,
    ParticipantEvictRequested,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    RoomCreated,
    RoomFinished,
    RoomMetadataUpdated,
    SubscriptionTelemetry,
    TrackKind,
    TrackMuted,
    TrackPayload,
    TrackPublished,
    TrackTelemetry,
    TrackUnpublished,
    UsageRollup,
    UsageSample,
)
from shared.eventstore import EventStore
from shared.replication import replica_stream

from .api import participant_proto, room_proto
from .state import ROOM_STATE_FOLD, RoomRegistry, RoomState

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/webhook+json"
USER_AGENT = "meshrtc-webhooks/1"
ID_PREFIX = "EV_"

T = TypeVar("T")


def webhook_id(event_id: str) -> str:
    """The WebhookEvent id for our event `event_id` (the same on every delivery and replay)."""
    return ID_PREFIX + event_id


def url_hash(url: str) -> str:
    """A short, stable name for a webhook URL (durable consumer name, deliveries table key)."""
    return hashlib.sha256(url.strip().encode()).hexdigest()[:16]


def durable_name(url: str) -> str:
    return f"webhook-{url_hash(url)}"


# ---------------------------------------------------------------------------------------------
# Mapping (pure)


def _track_info(track: TrackPayload) -> models.TrackInfo:
    info = models.TrackInfo()
    if track.info:
        try:
            info.ParseFromString(base64.b64decode(track.info))
        except (DecodeError, ValueError):
            info = models.TrackInfo()
    if not info.name and not info.mime_type:
        info.name, info.mime_type = track.name, track.mime_type
        info.type = {TrackKind.AUDIO: models.TrackType.AUDIO, TrackKind.VIDEO: models.TrackType.VIDEO}.get(
            track.kind, models.TrackType.DATA)
        info.source = track.source  # type: ignore[assignment]
        info.width, info.height, info.simulcast = track.width, track.height, track.simulcast
    info.sid = track.sid
    info.muted = track.muted
    return info


def _room(registry: RoomRegistry, env: Envelope) -> RoomState | None:
    return registry.rooms.get(env.room or "")


def _room_or_stub(registry: RoomRegistry, env: Envelope) -> models.Room:
    room = _room(registry, env)
    return room_proto(room) if room is not None else models.Room(name=env.room or "")


def _participant_info(registry: RoomRegistry, env: Envelope, sid: str, identity: str) -> models.ParticipantInfo:
    room = _room(registry, env)
    participant = room.participants.get(sid) if room is not None else None
    if participant is None:  # state lost (e.g. events older than the store): what the event says
        return models.ParticipantInfo(sid=sid, identity=identity)
    return participant_proto(participant)


def _track_owner(registry: RoomRegistry, env: Envelope, participant_sid: str) -> models.ParticipantInfo:
    """LiveKit's track webhooks name the participant by sid and identity only."""
    room = _room(registry, env)
    participant = room.participants.get(participant_sid) if room is not None else None
    return models.ParticipantInfo(sid=participant_sid, identity=participant.identity if participant else "")


def to_webhook(env: Envelope, registry: RoomRegistry) -> WebhookEvent | None:
    """The WebhookEvent for `env`, read against `registry` as it was *before* `env` (not changed
    here), or None for events that are no webhook."""
    fill = WEBHOOK_FOLD.handler(env.payload)
    if fill is None:
        return None
    event = WebhookEvent(id=webhook_id(env.id), created_at=env.ts // 1000)
    fill(event, env, env.payload, registry)
    return event


def _room_started(event: WebhookEvent, env: Envelope, payload: RoomCreated, registry: RoomRegistry) -> None:
    event.event = "room_started"
    event.room.CopyFrom(room_proto(RoomState(
        name=payload.name, sid=payload.sid, created_at_ms=env.ts, empty_timeout=payload.empty_timeout,
        departure_timeout=payload.departure_timeout, max_participants=payload.max_participants,
        metadata=payload.metadata, project=payload.project)))


def _room_finished(event: WebhookEvent, env: Envelope, payload: RoomFinished, registry: RoomRegistry) -> None:
    event.event = "room_finished"
    room = _room(registry, env)
    event.room.CopyFrom(room_proto(room) if room is not None and room.sid == payload.sid
                        else models.Room(sid=payload.sid, name=env.room or ""))


def _participant_joined(event: WebhookEvent, env: Envelope, payload: ParticipantActive,
                        registry: RoomRegistry) -> None:
    event.event = "participant_joined"
    event.room.CopyFrom(_room_or_stub(registry, env))
    event.participant.CopyFrom(_participant_info(registry, env, payload.sid, payload.identity))
    event.participant.state = models.ParticipantInfo.State.ACTIVE


def _participant_left(event: WebhookEvent, env: Envelope, payload: ParticipantLeft, registry: RoomRegistry) -> None:
    event.event = "participant_connection_aborted" if payload.aborted else "participant_left"
    event.room.CopyFrom(_room_or_stub(registry, env))
    event.participant.CopyFrom(_participant_info(registry, env, payload.sid, payload.identity))
    event.participant.state = models.ParticipantInfo.State.DISCONNECTED
    if payload.reason in models.DisconnectReason.keys():
        event.participant.disconnect_reason = models.DisconnectReason.Value(payload.reason)  # type: ignore[assignment]


def _track_published(event: WebhookEvent, env: Envelope, payload: TrackPublished, registry: RoomRegistry) -> None:
    event.event = "track_published"
    event.room.CopyFrom(_room_or_stub(registry, env))
    event.participant.CopyFrom(_track_owner(registry, env, payload.track.participant_sid))
    event.track.CopyFrom(_track_info(payload.track))


def _track_unpublished(event: WebhookEvent, env: Envelope, payload: TrackUnpublished,
                       registry: RoomRegistry) -> None:
    event.event = "track_unpublished"
    event.room.CopyFrom(_room_or_stub(registry, env))
    event.participant.CopyFrom(_track_owner(registry, env, payload.participant_sid))
    room = _room(registry, env)
    participant = room.participants.get(payload.participant_sid) if room is not None else None
    track = participant.tracks.get(payload.sid) if participant is not None else None
    event.track.CopyFrom(_track_info(track) if track is not None else models.TrackInfo(sid=payload.sid))


# Fills in the webhook of one event: (webhook, envelope, payload, room state before the event).
WebhookFill = Callable[[WebhookEvent, Envelope, Any, RoomRegistry], None]

WEBHOOK_FOLD: FoldDispatch[WebhookFill] = FoldDispatch(
    name="services.room.webhooks:to_webhook",
    handlers={
        RoomCreated: _room_started,
        RoomFinished: _room_finished,
        ParticipantActive: _participant_joined,
        ParticipantLeft: _participant_left,
        TrackPublished: _track_published,
        TrackUnpublished: _track_unpublished,
    },
    ignored={
        RoomMetadataUpdated: "LiveKit sends no webhook for it; the room state keeps it for later webhooks",
        ParticipantJoined: "LiveKit's participant_joined comes when the participant is active (participant.active)",
        ParticipantUpdated: "LiveKit sends no webhook for it; the room state keeps it for later webhooks",
        TrackMuted: "LiveKit sends no webhook for it; the room state keeps it for later webhooks",
        ParticipantEvictRequested: "the evicted session's participant.left sends the webhook",
        NodeUp: "infrastructure, not a LiveKit webhook",
        NodeHeartbeat: "infrastructure, not a LiveKit webhook",
        NodeDown: "its participants' participant.left (MIGRATION) send the webhooks",
        LinkStateChanged: "infrastructure, not a LiveKit webhook",
        UsageSample: "metering, not a LiveKit webhook",
        UsageRollup: "metering, not a LiveKit webhook",
        TrackTelemetry: "analytics, not a LiveKit webhook",
        SubscriptionTelemetry: "analytics, not a LiveKit webhook",
    },
)

# Events that become webhooks, and every event the room state needs to map them.
WEBHOOK_SOURCE_TYPES: frozenset[str] = WEBHOOK_FOLD.handled_types
CONTEXT_TYPES: frozenset[str] = WEBHOOK_SOURCE_TYPES | ROOM_STATE_FOLD.handled_types


class WebhookMapper:
    """Room state folded from the events seen so far, and the webhook of each new event."""

    def __init__(self, registry: RoomRegistry | None = None, remember: int = 256) -> None:
        self.registry = registry or RoomRegistry()
        self._recent: OrderedDict[str, WebhookEvent | None] = OrderedDict()
        self._remember = remember

    def apply(self, env: Envelope) -> None:
        """Fold `env` into the state without mapping it (rebuilding the state of the past)."""
        self.registry.apply(env)

    def feed(self, env: Envelope) -> WebhookEvent | None:
        """Map `env` against the state before it, then fold it in. Feeding the same event again
        (a redelivery) returns the same webhook as long as it is among the last `remember`."""
        if env.id in self._recent:
            return self._recent[env.id]
        event = None if env.id in self.registry.applied else to_webhook(env, self.registry)
        self.registry.apply(env)
        self._recent[env.id] = event
        if len(self._recent) > self._remember:
            self._recent.popitem(last=False)
        return event


def encode(event: WebhookEvent) -> bytes:
    """The request body: protobuf JSON, lowerCamelCase field names (as LiveKit's protojson)."""
    return MessageToJson(event, indent=None).encode()


def request_headers(body: bytes, api_key: str, api_secret: str) -> dict[str, str]:
    return {
        "Content-Type": CONTENT_TYPE,
        "Authorization": sign_webhook(api_key, api_secret, body),  # bare JWT, no "Bearer "
        "User-Agent": USER_AGENT,
    }


class WebhookRejected(RoomError, RuntimeError):
    """The receiver answered with a non-2xx status."""

    def __init__(self, url: str, status: int, text: str) -> None:
        super().__init__(f"{url} answered {status}: {' '.join(text.split())[:200]}")
        self.status = status


async def post_webhook(client: httpx.AsyncClient, url: str, body: bytes, api_key: str, api_secret: str) -> None:
    """One POST (signed now); raises httpx.HTTPError or WebhookRejected unless the answer is 2xx."""
    response = await client.post(url, content=body, headers=request_headers(body, api_key, api_secret))
    if not 200 <= response.status_code < 300:
        raise WebhookRejected(url, response.status_code, response.text)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "?"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, WebhookRejected) else text


# ---------------------------------------------------------------------------------------------
# Delivery


class _OrderedConsumer(Consumer):
    """A durable consumer with one message in flight (so a restart cannot let a later message
    overtake an unacked one) whose in-flight message is kept from redelivery while its handler
    runs, however long the receiver stays down."""

    def __init__(self, nc: NatsClient, js: JetStreamContext, stream: str, durable: str, handler: RawHandler,
                 settings: ConsumerSettings) -> None:
        super().__init__(nc, js, stream, durable, handler, settings=replace(settings, batch=1, max_ack_pending=1))
        self._keepalive = max(1.0, self.settings.ack_wait / 3)

    async def _handle(self, msg: Msg) -> None:
        keeper = asyncio.create_task(self._keep_in_progress(msg))
        try:
            await super()._handle(msg)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _keep_in_progress(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._keepalive)
            with contextlib.suppress(Exception):
                await msg.in_progress()


@dataclass
class WorkerStats:
    delivered: int = 0
    skipped: int = 0  # already recorded as delivered to this URL
    failed_attempts: int = 0
    last_error: str = ""


class WebhookWorker:
    """Delivers the DC's webhooks to one URL, in order, retrying until each is accepted."""

    def __init__(
        self,
        bus: Bus,
        store: EventStore,
        url: str,
        *,
        api_key: str,
        api_secret: str,
        max_backoff: float = 10.0,
        timeout: float = 10.0,
        ack_wait: float = 15.0,
        seed_wait: float = 10.0,
    ) -> None:
        self.bus = bus
        self.store = store
        self.url = url.strip()
        self.url_hash = url_hash(self.url)
        self.durable = durable_name(self.url)
        self.stream = replica_stream(bus.dc)
        self.api_key = api_key
        self.api_secret = api_secret
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.ack_wait = ack_wait
        self.seed_wait = seed_wait
        self.mapper = WebhookMapper()
        self.stats = WorkerStats()
        self._seeded = False
        self._client: httpx.AsyncClient | None = None
        self._consumer: _OrderedConsumer | None = None

    def __repr__(self) -> str:
        return f"WebhookWorker({self.url})"

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.timeout)
        policy = await self._deliver_policy()
        self._consumer = _OrderedConsumer(
            self.bus.nc, self.bus.js, self.stream, self.durable, event_handler_adapter(self._handle),
            ConsumerSettings(ack_wait=self.ack_wait, deliver_policy=policy))
        async for attempt in AsyncRetrying(stop=stop_after_delay(30), wait=wait_exponential(multiplier=0.1, max=2),
                                           reraise=True):
            with attempt:
                await self._consumer.start()
        log.info("webhooks to %s: consumer %s/%s (%s)", self.url, self.stream, self.durable, policy.value)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _deliver_policy(self) -> DeliverPolicy:
        """An existing durable keeps its policy. A new one starts with the events to come, unless
        this URL already had deliveries (its durable was lost): then it goes over the whole
        stream again and the deliveries table skips what was already sent."""
        try:
            info = await self.bus.js.consumer_info(self.stream, self.durable)
            if info.config.deliver_policy is not None:  # nats-py gives the wire string here
                return DeliverPolicy(info.config.deliver_policy)
        except nats.js.errors.NotFoundError:
            pass
        delivered = await self._db(lambda: bool(self.store.webhook_deliveries(self.url_hash)))
        return DeliverPolicy.ALL if delivered else DeliverPolicy.NEW

    # -- one event ------------------------------------------------------------------------------

    async def _handle(self, env: Envelope, meta: MsgMeta) -> None:
        if not self._seeded:
            await self._seed(env)
        if env.dc != self.bus.dc:
            self.mapper.apply(env)  # context only: the DC where the event originated sends its webhook
            return
        event = self.mapper.feed(env)
        if event is None:
            return
        if await self._db(lambda: self.store.webhook_delivered(self.url_hash, event.id)):
            self.stats.skipped += 1
            return
        body = encode(event)
        await self._deliver(event, body)
        await self._db(lambda: self.store.record_webhook_delivery(self.url_hash, event.id, env.room, event.event))
        self.stats.delivered += 1

    async def _seed(self, first: Envelope) -> None:
        """Rebuild the room state the first event is read against: every stored event before it.

        The room service appends events to the store in stream order, so "before it in the store"
        is "before it in the stream". The store may lag a little behind the stream: wait for the
        event to be stored (up to `seed_wait` s), else take all that is stored.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seed_wait
        while (stored := await self._db(lambda: self.store.get(first.id))) is None and loop.time() < deadline:
            await asyncio.sleep(0.2)
        events = await self._db(lambda: self.store.read(types=CONTEXT_TYPES))
        for past in events:
            if stored is None or past.seq < stored.seq:
                self.mapper.apply(past.envelope)
        self._seeded = True
        log.info("webhooks to %s: room state rebuilt from %d stored event(s) (%d rooms)", self.url,
                 sum(1 for p in events if stored is None or p.seq < stored.seq), len(self.mapper.registry.rooms))

    async def _deliver(self, event: WebhookEvent, body: bytes) -> None:
        assert self._client is not None
        client = self._client

        def before_sleep(state: RetryCallState) -> None:
            self.stats.failed_attempts += 1
            exc = state.outcome.exception() if state.outcome else None
            self.stats.last_error = _describe(exc)
            if state.attempt_number == 1 or state.attempt_number % 10 == 0:
                log.warning("webhook %s %s to %s not delivered (attempt %d: %s); retrying until it is",
                            event.event, event.id, self.url, state.attempt_number, self.stats.last_error)

        attempts = 0
        async for attempt in AsyncRetrying(
            stop=stop_never,
            wait=wait_exponential(multiplier=0.25, max=self.max_backoff),
            retry=retry_if_exception_type((httpx.HTTPError, WebhookRejected)),
            before_sleep=before_sleep,
        ):
            with attempt:
                attempts += 1
                await post_webhook(client, self.url, body, self.api_key, self.api_secret)
        if attempts > 1:
            log.info("webhook %s %s delivered to %s after %d attempts", event.event, event.id, self.url, attempts)

    async def _db(self, call: Callable[[], T]) -> T:
        """A store call in a thread, retried until the database answers (never raises)."""

        def before_sleep(state: RetryCallState) -> None:
            if state.attempt_number == 1 or state.attempt_number % 10 == 0:
                exc = state.outcome.exception() if state.outcome else None
                log.warning("webhooks to %s: database call failed (%s); retrying", self.url, _describe(exc))

        async for attempt in AsyncRetrying(stop=stop_never, wait=wait_exponential(multiplier=0.25, max=10),
                                           retry=retry_if_exception_type(Exception), before_sleep=before_sleep):
            with attempt:
                return await asyncio.to_thread(call)
        raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Replay


@dataclass
class ReplayResult:
    url: str
    sent: int = 0
    failed: str = ""  # why delivery stopped (the receiver kept refusing), or ""


def replay_events(events: Iterable[Envelope], since_ms: int, room: str | None = None) -> list[tuple[Envelope,
                                                                                                   WebhookEvent]]:
    """The webhooks of `events` (every stored event, oldest first, for the room state) whose event
    time is at or after `since_ms` (and of `room`, if given)."""
    mapper = WebhookMapper()
    out: list[tuple[Envelope, WebhookEvent]] = []
    for env in events:
        event = mapper.feed(env)
        if event is not None and env.ts >= since_ms and (room is None or env.room == room):
            out.append((env, event))
    return out


async def replay(
    store: EventStore,
    urls: list[str],
    since_ms: int,
    *,
    api_key: str,
    api_secret: str,
    room: str | None = None,
    attempts: int = 5,
    timeout: float = 10.0,
) -> list[ReplayResult]:
    """Re-send every webhook of stored events since `since_ms` to each URL, in store order, with
    the ids they were first sent with; each is recorded in `webhook_deliveries`. A URL that
    refuses one webhook `attempts` times in a row is given up (the rest is not sent to it)."""
    stored = await asyncio.to_thread(store.read, types=CONTEXT_TYPES)
    pending = replay_events((s.envelope for s in stored), since_ms, room)
    results: list[ReplayResult] = []
    async with httpx.AsyncClient(timeout=timeout) as client:
        for url in urls:
            result = ReplayResult(url)
            results.append(result)
            for env, event in pending:
                body = encode(event)
                try:
                    async for attempt in AsyncRetrying(
                        stop=stop_after_attempt(max(1, attempts)), wait=wait_exponential(multiplier=0.25, max=2),
                        retry=retry_if_exception_type((httpx.HTTPError, WebhookRejected)), reraise=True,
                    ):
                        with attempt:
                            await post_webhook(client, url, body, api_key, api_secret)
                except (httpx.HTTPError, WebhookRejected) as exc:
                    result.failed = f"{event.event} {event.id}: {_describe(exc)}"
                    break
                await asyncio.to_thread(store.record_webhook_delivery, url_hash(url), event.id, env.room, event.event)
                result.sent += 1
    return results
