"""Billing service: meters usage samples exactly once, rolls them up per minute and publishes the
rollups for billing consumers, and answers the usage API.

* Ingest: a durable pull consumer (`billing-<dc>`) on USAGE_<DC>; every fetched batch is applied
  in one SQL transaction (`BillingStore.apply`: sample ids + rollup increments) and then acked.
* Rollups: a minute bucket closes `close_delay` seconds (70) after its end; its row is then
  published as a `UsageRollup` event on `billing.<dc>.rollup` (BILLING_<DC>) with an id fixed by
  (row, revision), so a re-publish after a crash is deduplicated. On shutdown every row with
  unpublished changes is published at once. Late samples bump the revision and publish again.
* Usage API: request/reply on `ctl.<dc>.billing.usage` (the signal edge's `GET /usage`).
* Track analytics: a second durable consumer (`telemetry-<dc>`) stores TELEMETRY_<DC> samples
  (`telemetry.TelemetryStore`), deletes those older than MESHRTC_TELEMETRY_RETENTION every
  minute, and answers `ctl.<dc>.billing.room_stats` (the signal edge's `GET /stats/rooms/{room}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, NamedTuple

from nats.aio.msg import Msg

from shared.config import Settings
from shared.contracts.billing import MINUTE_MS, QueryError, RoomStatsQuery, UsageQuery
from shared.contracts.subjects import (
    rollup_subject,
    stream_name,
    telemetry_filter,
    telemetry_request_subject,
    usage_filter,
    usage_request_subject,
)
from shared.db import check_database
from shared.events import Direction, Envelope, EventDecodeError, UsageRollup, UsageSample
from shared.pricing import load_pricing
from shared.service import Service

from .consumer import BATCH_CONSUMER, BatchConsumer
from .store import ApplyResult, BillingStore, Rollup, make_billing_engine, now_ms, rollup_event_id
from .telemetry import TelemetryStore

log = logging.getLogger(__name__)

CLOSE_DELAY = 70.0  # seconds after a minute's end before its rollup is published
PUBLISH_INTERVAL = 5.0
PUBLISH_CONCURRENCY = 64
PRUNE_INTERVAL = 60.0  # seconds between two telemetry retention deletes


class FastSample(NamedTuple):
    """The fields of a UsageSample that billing reads (same names, so the store takes either)."""

    project: str
    room: str
    room_sid: str
    participant_sid: str
    identity: str
    track_sid: str
    direction: Direction
    bytes: int
    packets: int
    connection_ms: int
    start_ms: int
    end_ms: int


_TRACK_SAMPLE = FastSample("", "", "", "", "", "", Direction.UPSTREAM, 0, 0, 0, 0, 0)
_DIRECTIONS = {d.value: d for d in Direction}
_USAGE_SAMPLE = UsageSample.TYPE


def fast_sample(data: Any) -> FastSample | None:
    """Decode a well-formed usage.sample envelope without pydantic (the hot path: thousands a
    second). Per-track samples give `_TRACK_SAMPLE` (not billed). Returns None for anything that is
    not exactly the canonical shape, which then goes through `Envelope.from_dict` and its checks."""
    try:
        # Only the current schema: an older stored version goes through from_dict's upcasters.
        if data["type"] != _USAGE_SAMPLE or data.get("v", 1) != UsageSample.VERSION or data["id"].__class__ is not str:
            return None
        p = data["payload"]
        if p.get("track_sid"):
            return _TRACK_SAMPLE
        sample = FastSample(p["project"], p["room"], p.get("room_sid", ""), p.get("participant_sid", ""),
                            p.get("identity", ""), "", _DIRECTIONS[p["direction"]], p.get("bytes", 0),
                            p.get("packets", 0), p.get("connection_ms", 0), p["start_ms"], p["end_ms"])
    except (KeyError, TypeError, AttributeError):
        return None
    for text in sample[:5]:
        if text.__class__ is not str:
            return None
    for number in sample[7:]:
        if number.__class__ is not int:
            return None
    return sample


class BillingService(Service):
    name = "billing"

    def __init__(
        self,
        settings: Settings,
        *,
        close_delay: float = CLOSE_DELAY,
        publish_interval: float = PUBLISH_INTERVAL,
        batch: int = 1000,
        ack_wait: float = 15.0,
    ) -> None:
        super().__init__(settings)
        self.close_delay = close_delay
        self.publish_interval = publish_interval
        self.batch = batch
        self.ack_wait = ack_wait
        self.pricing = load_pricing(settings.pricing_file)  # a bad file fails before we connect
        self.store: BillingStore | None = None
        self.consumer: BatchConsumer | None = None
        self.telemetry: TelemetryStore | None = None
        self.telemetry_consumer: BatchConsumer | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._publish_lock = asyncio.Lock()
        # running totals, for logs, tests and the benchmark
        self.applied = 0
        self.duplicates = 0
        self.published = 0

    @property
    def durable(self) -> str:
        return f"billing-{self.settings.dc}"

    async def on_start(self) -> None:
        assert self.bus
        await asyncio.to_thread(check_database, self.settings.database_url)
        self.store = BillingStore(make_billing_engine(self.settings.database_url), self.pricing)
        await asyncio.to_thread(self.store.check_schema)
        log.info("billing: pricing from %s", self.pricing.source)
        await self.bus.serve(usage_request_subject(self.settings.dc), self._on_usage, concurrency=4)
        self.consumer = BatchConsumer(
            self.bus, stream_name("usage", self.settings.dc), self.durable, self._on_batch,
            filter_subject=usage_filter(self.settings.dc),
            settings=replace(BATCH_CONSUMER, batch=self.batch, ack_wait=self.ack_wait))
        await self.consumer.start()
        self._publisher = asyncio.create_task(self._publish_loop(), name="billing-rollups")
        await self._start_telemetry()

    async def on_stop(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
        if self.telemetry_consumer is not None:
            await self.telemetry_consumer.stop()
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        if self.consumer is not None:
            await self.consumer.stop()
            log.info("billing: %d sample(s) applied, %d duplicate(s) skipped, in %d batch(es)", self.applied,
                     self.duplicates, self.consumer.batches)
        if self.store is not None:
            try:
                await asyncio.wait_for(self.publish_rollups(closed_only=False), 10)
            except Exception as exc:
                log.warning("billing: rollups not all published at shutdown (%s); they go out after the restart", exc)
            self.store.engine.dispose()

    # ---- ingest ---------------------------------------------------------------------------
    async def ingest(self, envelopes: Iterable[Envelope]) -> ApplyResult:
        """Apply usage-sample envelopes exactly once (one transaction). Other events are ignored."""
        return await self.apply_samples([(env.id, env.payload) for env in envelopes
                                         if isinstance(env.payload, UsageSample)])

    async def apply_samples(self, samples: list[tuple[str, Any]]) -> ApplyResult:
        """(event id, UsageSample or FastSample) pairs, applied exactly once in one transaction."""
        assert self.store
        if not samples:
            return ApplyResult()
        result = await asyncio.to_thread(self.store.apply, samples)
        self.applied += result.applied
        self.duplicates += result.duplicates
        if result.duplicates:
            log.info("billing: %d duplicate sample(s) skipped", result.duplicates)
        return result

    async def _on_batch(self, msgs: list[Msg]) -> list[Msg]:
        samples: list[tuple[str, Any]] = []
        bad: list[Msg] = []
        for msg in msgs:
            try:
                data = json.loads(msg.data)
                sample: FastSample | UsageSample | None = fast_sample(data)
                if sample is None:  # anything unusual: the full, validating decoder decides
                    env = Envelope.from_dict(data) if isinstance(data, dict) else Envelope.from_json(msg.data)
                    if not isinstance(env.payload, UsageSample):
                        continue
                    data, sample = {"id": env.id}, env.payload
                if sample is _TRACK_SAMPLE or sample.track_sid:
                    continue  # per-track samples are analytics, not billed
                samples.append((data["id"], sample))
            except (EventDecodeError, ValueError) as exc:
                log.warning("billing: dropping undecodable message on %s: %s", msg.subject, exc)
                bad.append(msg)
        await self.apply_samples(samples)
        return bad

    # ---- rollup events --------------------------------------------------------------------
    def rollup_envelope(self, row: Rollup) -> Envelope:
        key = row.key
        payload = UsageRollup(
            key=key, revision=row.revision, project=row.project, room=row.room, room_sid=row.room_sid,
            participant_sid=row.participant_sid, identity=row.identity, direction=row.direction,  # type: ignore[arg-type]
            minute_start_ms=row.minute_ms, minute_end_ms=row.minute_ms + MINUTE_MS, bytes=row.bytes,
            packets=row.packets, connection_ms=row.connection_ms, samples=row.samples)
        return Envelope.new(payload, dc=self.settings.dc, node=self.node_id, room=row.room,
                            event_id=rollup_event_id(key, row.revision, row.minute_ms),
                            ts=row.minute_ms + MINUTE_MS)

    async def publish_rollups(self, *, closed_only: bool = True, now: int | None = None) -> int:
        """Publish every rollup with unpublished changes (of closed minutes only, unless told)."""
        assert self.bus and self.store
        total = 0
        async with self._publish_lock:
            while True:
                cutoff = (now if now is not None else now_ms()) - int(self.close_delay * 1000)
                rows = await asyncio.to_thread(self.store.pending, cutoff if closed_only else None, 1000)
                if not rows:
                    return total
                done: list[tuple[int, int]] = []
                for start in range(0, len(rows), PUBLISH_CONCURRENCY):
                    chunk = rows[start:start + PUBLISH_CONCURRENCY]
                    await asyncio.gather(*(self.bus.publish_event(self.rollup_envelope(r), rollup_subject(
                        self.settings.dc)) for r in chunk))
                    done.extend((r.id, r.revision) for r in chunk)
                await asyncio.to_thread(self.store.mark_published, done)
                total += len(done)
                self.published += len(done)

    async def _publish_loop(self) -> None:
        while True:
            await asyncio.sleep(self.publish_interval)
            try:
                count = await self.publish_rollups()
                if count:
                    log.info("billing: published %d rollup(s)", count)
            except Exception as exc:  # the bus or the database is down: next round
                log.warning("billing: publishing rollups failed (%s: %s)", type(exc).__name__, exc)

    # ---- usage API ------------------------------------------------------------------------
    async def _on_usage(self, data: bytes) -> bytes:
        assert self.store
        started = time.monotonic()
        try:
            query = UsageQuery.from_json(data)
        except QueryError as exc:
            return json.dumps({"error": str(exc), "status": 400}).encode()
        result = await asyncio.to_thread(self.store.usage, query)
        log.debug("billing: usage query %s answered in %.3fs", query, time.monotonic() - started)
        return json.dumps(result, separators=(",", ":")).encode()


    # ---- track analytics ------------------------------------------------------------------
    async def _start_telemetry(self) -> None:
        assert self.bus and self.store
        self.telemetry = TelemetryStore(self.store.engine)
        await asyncio.to_thread(self.telemetry.check_schema)
        await self.bus.serve(telemetry_request_subject(self.settings.dc), self._on_room_stats, concurrency=4)
        self.telemetry_consumer = BatchConsumer(
            self.bus, stream_name("telemetry", self.settings.dc), f"telemetry-{self.settings.dc}",
            self._on_telemetry_batch, filter_subject=telemetry_filter(self.settings.dc),
            settings=replace(BATCH_CONSUMER, batch=500, ack_wait=self.ack_wait))
        await self.telemetry_consumer.start()
        self._pruner = asyncio.create_task(self._prune_loop(), name="telemetry-retention")

    async def _on_telemetry_batch(self, msgs: list[Msg]) -> list[Msg]:
        assert self.telemetry
        envelopes: list[Envelope] = []
        bad: list[Msg] = []
        for msg in msgs:
            try:
                envelopes.append(Envelope.from_json(msg.data))
            except EventDecodeError as exc:
                log.warning("telemetry: dropping undecodable message on %s: %s", msg.subject, exc)
                bad.append(msg)
        await asyncio.to_thread(self.telemetry.insert, envelopes)
        return bad

    async def _prune_loop(self) -> None:
        assert self.telemetry
        while True:
            try:
                cutoff = now_ms() - self.settings.telemetry_retention_s * 1000
                deleted = await asyncio.to_thread(self.telemetry.prune, cutoff)
                if deleted:
                    log.info("telemetry: %d sample(s) past retention deleted", deleted)
            except Exception as exc:  # the database is down: next round
                log.warning("telemetry: retention delete failed (%s: %s)", type(exc).__name__, exc)
            await asyncio.sleep(PRUNE_INTERVAL)

    async def _on_room_stats(self, data: bytes) -> bytes:
        assert self.telemetry
        try:
            query = RoomStatsQuery.decode(data)
        except ValueError as exc:
            return json.dumps({"error": str(exc), "status": 400}).encode()
        result = await asyncio.to_thread(self.telemetry.room_stats, query)
        return json.dumps(result, separators=(",", ":")).encode()


async def main(settings: Settings) -> None:
    await BillingService(settings).run()
