"""Billing's SQL state: applied sample ids and per-minute rollups (synchronous; the service calls
it through `asyncio.to_thread`).

Exactly once: `apply()` inserts the ids of a batch of samples (`ON CONFLICT DO NOTHING RETURNING
id`, so it learns which ones are new) and adds only the new ones to their rollups, in ONE
transaction. A redelivered or re-published sample finds its id and changes nothing; a crash
before the commit leaves nothing behind, and the sample is applied on redelivery.

Only participant totals (`track_sid == ""`) are billed: they are the bytes that crossed the media
node's sockets for that participant. Per-track samples are analytics and are acknowledged without
being stored. A sample belongs to the minute its interval ends in (`max(start, end - 1)`).

Rollups carry a `revision` (bumped by every transaction that changes the row) and the revision
last published as a `UsageRollup` event; `dirty` marks rows with something left to publish.

The tables mirror `migrations/versions/0003_billing.py`, which is authoritative for DDL.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from shared.contracts.billing import API_VERSION, MINUTE_MS, UsageQuery, iso_ms
from shared.db import DatabaseUnavailable, make_engine, redact_url
from shared.events import UsageSample
from shared.pricing import DIRECTIONS, Pricing, Usage

log = logging.getLogger(__name__)

metadata = sa.MetaData()

billing_samples = sa.Table(
    "billing_samples",
    metadata,
    sa.Column("id", sa.String(32), nullable=False),
    sa.Column("minute_ms", sa.BigInteger(), nullable=False),
    sa.Column("applied_at", sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint("id", name="pk_billing_samples"),
    sa.Index("ix_billing_samples_minute", "minute_ms"),
)

usage_rollups = sa.Table(
    "usage_rollups",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("minute_ms", sa.BigInteger(), nullable=False),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("room", sa.Text(), nullable=False),
    sa.Column("room_sid", sa.String(64), nullable=False),
    sa.Column("participant_sid", sa.String(64), nullable=False),
    sa.Column("identity", sa.Text(), nullable=False),
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("bytes", sa.BigInteger(), nullable=False),
    sa.Column("packets", sa.BigInteger(), nullable=False),
    sa.Column("connection_ms", sa.BigInteger(), nullable=False),
    sa.Column("samples", sa.Integer(), nullable=False),
    sa.Column("revision", sa.Integer(), nullable=False),
    sa.Column("published_revision", sa.Integer(), nullable=False),
    sa.Column("dirty", sa.Boolean(), nullable=False),
    sa.Column("updated_at", sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint("id", name="pk_usage_rollups"),
    sa.UniqueConstraint("minute_ms", "project", "room", "room_sid", "participant_sid", "direction",
                        name="uq_usage_rollups_key"),
    sa.Index("ix_usage_rollups_project_room_minute", "project", "room", "minute_ms"),
    sa.Index("ix_usage_rollups_minute", "minute_ms"),
    sa.Index("ix_usage_rollups_dirty_minute", "dirty", "minute_ms"),
    sqlite_autoincrement=True,
)

KEY_COLUMNS = ("minute_ms", "project", "room", "room_sid", "participant_sid", "direction")
_ID_CHUNK = 500  # ids per multi-row INSERT (SQLite allows 32766 bound parameters)


def now_ms() -> int:
    return int(time.time() * 1000)


def sample_minute(sample: UsageSample) -> int:
    """Start (unix ms) of the minute the sample's interval ends in."""
    moment = max(sample.start_ms, sample.end_ms - 1)
    return moment - moment % MINUTE_MS


def rollup_key(minute_ms: int, project: str, room: str, room_sid: str, participant_sid: str, direction: str) -> str:
    """Stable identity of one rollup row: 32 hex characters."""
    raw = "\x1f".join((str(minute_ms), project, room, room_sid, participant_sid, direction))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def rollup_event_id(key: str, revision: int, minute_ms: int) -> str:
    """The UsageRollup envelope id: ULID-shaped (sorts by minute) and deterministic in (key,
    revision), so publishing the same revision again is dropped by the stream's dedupe."""
    digest = hashlib.sha256(f"{key}:{revision}".encode()).digest()
    return _b32(minute_ms, 10) + _b32(int.from_bytes(digest[:10], "big"), 16)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: int = 0  # new participant-total samples, now in their rollups
    duplicates: int = 0  # already applied before (or twice in this batch): skipped
    ignored: int = 0  # per-track samples: not billed


@dataclass(frozen=True, slots=True)
class Rollup:
    id: int
    minute_ms: int
    project: str
    room: str
    room_sid: str
    participant_sid: str
    identity: str
    direction: str
    bytes: int
    packets: int
    connection_ms: int
    samples: int
    revision: int
    published_revision: int

    @property
    def key(self) -> str:
        return rollup_key(self.minute_ms, self.project, self.room, self.room_sid, self.participant_sid,
                          self.direction)


_ROLLUP_FIELDS = tuple(f.name for f in fields(Rollup))


def make_billing_engine(url: str) -> Engine:
    """An engine whose SQLite transactions take the write lock up front (BEGIN IMMEDIATE), so two
    writers of one file queue on the busy timeout instead of failing on a lock upgrade."""
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _driver_autocommit(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


_ROLLUP_INSERT_COLUMNS = (*KEY_COLUMNS, "identity", "bytes", "packets", "connection_ms", "samples", "updated_at")


class BillingStore:
    def __init__(self, engine: Engine, pricing: Pricing | None = None, *, retries: int = 5) -> None:
        self.engine = engine
        self.pricing = pricing or Pricing()
        self.retries = retries
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):  # pragma: no cover - make_engine builds only these
            raise RuntimeError(f"billing needs SQLite or PostgreSQL, not {dialect}")
        # Hot path in plain SQL through the driver's executemany: SQLAlchemy's per-row parameter
        # processing costs more than the database work at thousands of samples a second.
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._mark = mark
        self._insert_ids_sql = ("INSERT INTO billing_samples (id, minute_ms, applied_at) "
                                f"VALUES ({mark}, {mark}, {mark})")
        values = ", ".join([mark] * len(_ROLLUP_INSERT_COLUMNS))
        self._upsert_sql = (
            f"INSERT INTO usage_rollups ({', '.join(_ROLLUP_INSERT_COLUMNS)}, revision, published_revision, dirty) "
            f"VALUES ({values}, 1, 0, TRUE) "
            f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET "
            "bytes = usage_rollups.bytes + excluded.bytes, "
            "packets = usage_rollups.packets + excluded.packets, "
            "connection_ms = usage_rollups.connection_ms + excluded.connection_ms, "
            "samples = usage_rollups.samples + excluded.samples, "
            "identity = excluded.identity, "
            "revision = usage_rollups.revision + 1, "
            "dirty = TRUE, "
            "updated_at = excluded.updated_at"
        )

    def check_schema(self) -> None:
        """DatabaseUnavailable naming the fix when the billing tables are missing."""
        tables = set(sa.inspect(self.engine).get_table_names())
        missing = {"billing_samples", "usage_rollups"} - tables
        if missing:
            raise DatabaseUnavailable(redact_url(str(self.engine.url)),
                                      f"billing tables {', '.join(sorted(missing))} missing: "
                                      "run 'meshrtc db upgrade'")

    # -- ingest --------------------------------------------------------------------------------

    def apply(self, samples: Sequence[tuple[str, UsageSample]], applied_at: int | None = None) -> ApplyResult:
        """Apply (event id, sample) pairs exactly once, all in one transaction."""
        billed: dict[str, UsageSample] = {}
        ignored = duplicates = 0
        for event_id, sample in samples:
            if sample.track_sid:
                ignored += 1
            elif event_id in billed:
                duplicates += 1
            else:
                billed[event_id] = sample
        if not billed:
            return ApplyResult(0, duplicates, ignored)
        stamp = applied_at if applied_at is not None else now_ms()
        for attempt in range(self.retries + 1):
            try:
                with self.engine.begin() as conn:
                    new = self._apply_in(conn, billed, stamp)
                break
            except (sa.exc.OperationalError, sa.exc.IntegrityError) as exc:  # busy/locked; a concurrent id
                if attempt >= self.retries:
                    raise
                log.warning("billing transaction failed (%s); retrying", " ".join(str(exc.orig).split()))
                time.sleep(0.05 * 2 ** attempt)
        return ApplyResult(new, duplicates + len(billed) - new, ignored)

    def _apply_in(self, conn: Connection, billed: dict[str, UsageSample], stamp: int) -> int:
        # Which ids were applied before? Under BEGIN IMMEDIATE (SQLite) nobody can add one before
        # we commit; on PostgreSQL a concurrent writer of the same id makes our INSERT fail on the
        # primary key, the transaction rolls back and the retry sees the id.
        ids = list(billed)
        seen: set[str] = set()
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start:start + _ID_CHUNK]
            marks = ", ".join([self._mark] * len(chunk))
            seen.update(row[0] for row in conn.exec_driver_sql(
                f"SELECT id FROM billing_samples WHERE id IN ({marks})", tuple(chunk)))
        new_rows: list[tuple[str, int, int]] = []
        increments: dict[tuple[Any, ...], list[Any]] = {}
        for event_id, s in billed.items():
            if event_id in seen:
                continue
            moment = max(s.start_ms, s.end_ms - 1)
            minute = moment - moment % MINUTE_MS
            new_rows.append((event_id, minute, stamp))
            key = (minute, s.project, s.room, s.room_sid, s.participant_sid, s.direction.value)
            row = increments.get(key)
            if row is None:
                # KEY_COLUMNS..., identity, bytes, packets, connection_ms, samples, updated_at
                increments[key] = [*key, s.identity, s.bytes, s.packets, s.connection_ms, 1, stamp]
            else:
                row[7] += s.bytes
                row[8] += s.packets
                row[9] += s.connection_ms
                row[10] += 1
                if s.identity:
                    row[6] = s.identity
        if not new_rows:
            return 0
        conn.exec_driver_sql(self._insert_ids_sql, new_rows)
        conn.exec_driver_sql(self._upsert_sql, [tuple(row) for row in increments.values()])
        return len(new_rows)

    def sample_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(billing_samples)).scalar_one())

    # -- publishing ----------------------------------------------------------------------------

    def pending(self, closed_before_ms: int | None, limit: int = 1000) -> list[Rollup]:
        """Rollups with an unpublished revision whose minute ended by `closed_before_ms` (None: all)."""
        t = usage_rollups.c
        query = sa.select(usage_rollups).where(t.dirty.is_(True))
        if closed_before_ms is not None:
            query = query.where(t.minute_ms + MINUTE_MS <= closed_before_ms)
        query = query.order_by(t.minute_ms, t.id).limit(limit)
        with self.engine.connect() as conn:
            return [Rollup(**{name: row._mapping[name] for name in _ROLLUP_FIELDS}) for row in conn.execute(query)]

    def mark_published(self, published: Sequence[tuple[int, int]]) -> None:
        """Record (rollup id, revision) as published; a row changed since stays dirty."""
        if not published:
            return
        t = usage_rollups.c
        stmt = (sa.update(usage_rollups)
                .where(t.id == sa.bindparam("rid"), t.published_revision < sa.bindparam("rev"))
                .values(published_revision=sa.bindparam("rev"),
                        dirty=sa.case((t.revision > sa.bindparam("rev"), True), else_=False)))
        with self.engine.begin() as conn:
            conn.execute(stmt, [{"rid": rid, "rev": rev} for rid, rev in published])

    # -- queries -------------------------------------------------------------------------------

    def _filters(self, query: UsageQuery) -> list[Any]:
        t = usage_rollups.c
        where: list[Any] = []
        if query.project is not None:
            where.append(t.project == query.project)
        if query.room is not None:
            where.append(t.room == query.room)
        if query.participant is not None:
            where.append(sa.or_(t.identity == query.participant, t.participant_sid == query.participant))
        if query.from_minute_ms is not None:
            where.append(t.minute_ms >= query.from_minute_ms)
        if query.to_ms is not None:
            where.append(t.minute_ms < query.to_ms)
        return where

    def usage(self, query: UsageQuery) -> dict[str, Any]:
        """Totals (bytes/packets per direction, connection minutes, priced cost), one entry per
        participant session, and per-minute rows (at most `query.max_rows`)."""
        t = usage_rollups.c
        where = self._filters(query)
        grouped = (
            sa.select(t.project, t.participant_sid, t.direction, sa.func.max(t.room).label("room"),
                      sa.func.max(t.room_sid).label("room_sid"), sa.func.max(t.identity).label("identity"),
                      sa.func.sum(t.bytes).label("bytes"), sa.func.sum(t.packets).label("packets"),
                      sa.func.sum(t.connection_ms).label("connection_ms"),
                      sa.func.sum(t.samples).label("samples"),
                      sa.func.min(t.minute_ms).label("first"), sa.func.max(t.minute_ms).label("last"))
            .where(*where).group_by(t.project, t.participant_sid, t.direction)
        )
        rows_query = (sa.select(usage_rollups).where(*where)
                      .order_by(t.minute_ms, t.room, t.identity, t.participant_sid, t.direction)
                      .limit(query.max_rows + 1))
        with self.engine.connect() as conn:
            groups = list(conn.execute(grouped))
            rows = list(conn.execute(rows_query)) if query.max_rows else []
        participants: dict[tuple[str, str], dict[str, Any]] = {}
        for g in groups:
            entry = participants.get((g.project, g.participant_sid))
            if entry is None:
                entry = participants[(g.project, g.participant_sid)] = {
                    "project": g.project, "room": g.room, "room_sid": g.room_sid,
                    "participant_sid": g.participant_sid, "identity": g.identity,
                    "bytes": dict.fromkeys(DIRECTIONS, 0), "packets": dict.fromkeys(DIRECTIONS, 0),
                    "connection_ms": 0, "samples": 0, "first_ms": g.first, "last_ms": g.last,
                }
            entry["bytes"][g.direction] = entry["bytes"].get(g.direction, 0) + int(g.bytes)
            entry["packets"][g.direction] = entry["packets"].get(g.direction, 0) + int(g.packets)
            entry["connection_ms"] += int(g.connection_ms)
            entry["samples"] += int(g.samples)
            entry["first_ms"] = min(entry["first_ms"], g.first)
            entry["last_ms"] = max(entry["last_ms"], g.last)
        totals_bytes = dict.fromkeys(DIRECTIONS, 0)
        totals_packets = dict.fromkeys(DIRECTIONS, 0)
        total_ms = 0
        total_minutes = Decimal(0)
        charges = []
        out_participants = []
        for entry in sorted(participants.values(), key=lambda e: (e["first_ms"], e["room"], e["identity"])):
            charge = self.pricing.price(Usage(bytes=entry["bytes"], connection_ms=entry["connection_ms"]))
            charges.append(charge)
            for direction, value in entry["bytes"].items():
                totals_bytes[direction] = totals_bytes.get(direction, 0) + value
            for direction, value in entry["packets"].items():
                totals_packets[direction] = totals_packets.get(direction, 0) + value
            total_ms += entry["connection_ms"]
            total_minutes += charge.connection_minutes
            out_participants.append({
                **{k: v for k, v in entry.items() if k not in ("first_ms", "last_ms")},
                "first_minute": iso_ms(entry["first_ms"]), "last_minute": iso_ms(entry["last_ms"]),
                "connection_minutes": float(charge.connection_minutes),
                "cost": charge.to_dict(self.pricing.currency),
            })
        total_charge = self.pricing.price_all([])
        for charge in charges:
            total_charge = total_charge + charge
        truncated = len(rows) > query.max_rows
        return {
            "version": API_VERSION,
            "query": query.describe(),
            "pricing": self.pricing.describe(),
            "totals": {
                "bytes": totals_bytes,
                "packets": totals_packets,
                "connection_ms": total_ms,
                "connection_minutes": float(total_minutes),
                "participants": len(out_participants),
                "cost": total_charge.to_dict(self.pricing.currency),
            },
            "participants": out_participants,
            "rows": [{
                "minute": iso_ms(r.minute_ms), "minute_ms": r.minute_ms, "project": r.project, "room": r.room,
                "room_sid": r.room_sid, "participant_sid": r.participant_sid, "identity": r.identity,
                "direction": r.direction, "bytes": r.bytes, "packets": r.packets,
                "connection_ms": r.connection_ms, "samples": r.samples, "revision": r.revision,
            } for r in rows[:query.max_rows]],
            "rows_truncated": truncated,
        }
