"""Append-only SQL event store and consumer offsets.

`EventStore` is synchronous; async services call it through `asyncio.to_thread`. Events are keyed
by their envelope id, so appending one twice stores it once. `seq` is the store's own order (the
order events were appended here), used to read "everything after what I have seen".

Consumers are idempotent: they remember, in `consumer_offsets`, the last stream sequence they
applied. `append_and_set_offset` stores an event and advances that offset in one transaction, so
a consumer that crashes between applying a message and acking it neither loses nor doubles it:
on redelivery either both were committed (skip: `stream_seq <= get_offset(consumer)`, or the
append returns False) or neither was (apply again).

`webhook_deliveries` remembers which webhook (by its stable id) reached which URL (by hash), so
the webhook workers of `services/room/webhooks.py` never send one twice after a restart.

The tables below mirror `migrations/versions/`, which is authoritative for DDL; the schema is
created by `shared.db.upgrade`, never by `metadata.create_all`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from shared.events import Envelope, EventDecodeError

log = logging.getLogger(__name__)

_PG_APPEND_LOCK = 0x6D657368_65767473  # "meshevts": advisory lock key serializing appends

metadata = sa.MetaData()

events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("id", sa.String(32), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("ts", sa.BigInteger(), nullable=False),
    sa.Column("dc", sa.String(32), nullable=False),
    sa.Column("node", sa.String(64), nullable=False),
    sa.Column("room", sa.Text(), nullable=True),
    sa.Column("v", sa.Integer(), nullable=False),
    sa.Column("payload", sa.Text(), nullable=False),
    sa.Column("stored_at", sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint("seq", name="pk_events"),
    sa.UniqueConstraint("id", name="uq_events_id"),
    sa.Index("ix_events_room_seq", "room", "seq"),
    sa.Index("ix_events_type", "type"),
    sqlite_autoincrement=True,
)

consumer_offsets = sa.Table(
    "consumer_offsets",
    metadata,
    sa.Column("consumer", sa.String(128), nullable=False),
    sa.Column("stream", sa.String(64), nullable=False),
    sa.Column("last_seq", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint("consumer", name="pk_consumer_offsets"),
)


webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("url_hash", sa.String(64), nullable=False),
    sa.Column("webhook_id", sa.String(64), nullable=False),
    sa.Column("room", sa.Text(), nullable=True),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("delivered_at", sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint("url_hash", "webhook_id", name="pk_webhook_deliveries"),
)


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    url_hash: str
    webhook_id: str  # the WebhookEvent id ("EV_" + source event id)
    room: str | None
    event: str  # "room_started", "participant_joined", ...
    delivered_at: int  # unix ms


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int  # position in this store (strictly increasing in append order)
    stored_at: int  # unix ms when this store appended it
    envelope: Envelope


def _now_ms() -> int:
    return int(time.time() * 1000)


def _row(env: Envelope, stored_at: int) -> dict[str, Any]:
    return {
        "id": env.id,
        "type": env.type,
        "ts": env.ts,
        "dc": env.dc,
        "node": env.node,
        "room": env.room,
        "v": env.v,
        "payload": json.dumps(env.payload.model_dump(mode="json"), separators=(",", ":")),
        "stored_at": stored_at,
    }


def _dialect_insert(conn: Connection) -> Any:
    name = conn.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert
    return None


class EventStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- writing ----------------------------------------------------------------------------

    def append(self, env: Envelope) -> bool:
        """Store `env`; False (and nothing written) if an event with this id is already stored."""
        with self.engine.begin() as conn:
            self._serialize_writers(conn)
            return self._insert(conn, env)

    def append_many(self, envs: Iterable[Envelope]) -> int:
        """Store several events in one transaction; returns how many were new."""
        stored = 0
        with self.engine.begin() as conn:
            self._serialize_writers(conn)
            for env in envs:
                stored += self._insert(conn, env)
        return stored

    def append_and_set_offset(self, env: Envelope, consumer: str, stream: str, stream_seq: int) -> bool:
        """Store `env` and advance `consumer`'s offset to `stream_seq`, in one transaction.

        Returns whether the event was new. A duplicate (already stored: a redelivery, or the same
        event reaching us by another path) is not stored again but still advances the offset,
        since it has been handled. The offset never moves backwards here (a late redelivery of
        an older message leaves it alone). If anything fails, neither the event nor the offset is
        written.
        """
        with self.engine.begin() as conn:
            self._serialize_writers(conn)
            inserted = self._insert(conn, env)
            self._upsert_offset(conn, consumer, stream, stream_seq, monotonic=True)
        return inserted

    def _insert(self, conn: Connection, env: Envelope) -> bool:
        row = _row(env, _now_ms())
        insert = _dialect_insert(conn)
        if insert is not None:
            stmt = insert(events).values(**row).on_conflict_do_nothing(index_elements=["id"])
            # RETURNING yields a row only when inserted (rowcount is unreliable with RETURNING).
            return conn.execute(stmt.returning(events.c.seq)).first() is not None
        try:  # other dialects: rely on the unique constraint, inside a savepoint
            with conn.begin_nested():
                conn.execute(events.insert().values(**row))
            return True
        except sa.exc.IntegrityError:
            if conn.execute(sa.select(events.c.seq).where(events.c.id == env.id)).first() is None:
                raise
            return False

    @staticmethod
    def _serialize_writers(conn: Connection) -> None:
        """Make seq order commit order, so a reader paging on `after_seq` never skips an event.

        PostgreSQL hands out sequence values at insert time; two concurrent transactions could
        commit seq 8 after a reader already saw seq 9. A transaction-scoped advisory lock (held
        until commit, re-entrant within the transaction) serializes appends. SQLite already
        allows one writer at a time.
        """
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_APPEND_LOCK})

    # -- reading ----------------------------------------------------------------------------

    def read(
        self,
        after_seq: int = 0,
        *,
        room: str | None = None,
        types: Iterable[str] | None = None,
        since_ts: int | None = None,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """Events with seq > `after_seq`, in seq order, optionally only those of `room`, of one of
        `types` (an empty collection matches nothing), with `ts >= since_ts`, at most `limit`.

        Rows of an older schema version are brought up to the current one by the upcasters of
        `shared.events` (`Envelope.from_dict`). Stored rows this build cannot decode (unknown
        type, newer version, an older version without upcaster, corrupt) are skipped with a
        warning; they do not count towards `limit`, so paging on the last returned seq never
        stalls on them.
        """
        type_list = None if types is None else list(types)
        if type_list is not None and not type_list:
            return []
        if limit is not None and limit <= 0:
            return []
        out: list[StoredEvent] = []
        cursor = after_seq
        while True:
            want = None if limit is None else limit - len(out)
            stmt = sa.select(events).where(events.c.seq > cursor).order_by(events.c.seq)
            if room is not None:
                stmt = stmt.where(events.c.room == room)
            if type_list is not None:
                stmt = stmt.where(events.c.type.in_(type_list))
            if since_ts is not None:
                stmt = stmt.where(events.c.ts >= since_ts)
            if want is not None:
                stmt = stmt.limit(want)
            with self.engine.connect() as conn:
                rows = conn.execute(stmt).all()
            for row in rows:
                cursor = row.seq
                stored = self._decode(row)
                if stored is not None:
                    out.append(stored)
            if want is None or len(rows) < want or len(out) == limit:
                return out

    def get(self, event_id: str) -> StoredEvent | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(events).where(events.c.id == event_id)).first()
        return None if row is None else self._decode(row)

    def last_seq(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(events.c.seq))).scalar() or 0)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(events)).scalar() or 0)

    @staticmethod
    def _decode(row: Any) -> StoredEvent | None:
        try:
            payload = json.loads(row.payload)
            env = Envelope.from_dict({
                "id": row.id,
                "type": row.type,
                "ts": row.ts,
                "dc": row.dc,
                "node": row.node,
                "room": row.room,
                "v": row.v,
                "payload": payload,
            })
        except (EventDecodeError, ValueError, TypeError) as exc:
            log.warning("skipping stored event seq=%s id=%s type=%s: %s", row.seq, row.id, row.type, exc)
            return None
        return StoredEvent(seq=int(row.seq), stored_at=int(row.stored_at), envelope=env)

    # -- consumer offsets -------------------------------------------------------------------

    def get_offset(self, consumer: str) -> int:
        """The last stream sequence `consumer` applied (0 if it never recorded one)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(consumer_offsets.c.last_seq).where(consumer_offsets.c.consumer == consumer)
            ).scalar()
        return int(value or 0)

    def set_offset(self, consumer: str, stream: str, last_seq: int, *, monotonic: bool = False) -> None:
        """Record `consumer`'s offset (insert or update). With `monotonic`, never move it back."""
        with self.engine.begin() as conn:
            self._upsert_offset(conn, consumer, stream, last_seq, monotonic=monotonic)

    def _upsert_offset(self, conn: Connection, consumer: str, stream: str, last_seq: int, *,
                       monotonic: bool) -> None:
        values = {"consumer": consumer, "stream": stream, "last_seq": last_seq, "updated_at": _now_ms()}
        insert = _dialect_insert(conn)
        if insert is not None:
            stmt = insert(consumer_offsets).values(**values)
            new_seq: Any = stmt.excluded.last_seq
            if monotonic:
                new_seq = sa.case(
                    (consumer_offsets.c.last_seq > stmt.excluded.last_seq, consumer_offsets.c.last_seq),
                    else_=stmt.excluded.last_seq,
                )
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["consumer"],
                set_={"stream": stmt.excluded.stream, "last_seq": new_seq,
                      "updated_at": stmt.excluded.updated_at},
            ))
            return
        current = conn.execute(
            sa.select(consumer_offsets.c.last_seq).where(consumer_offsets.c.consumer == consumer)
        ).scalar()
        if current is None:
            conn.execute(consumer_offsets.insert().values(**values))
            return
        if monotonic:
            values["last_seq"] = max(int(current), last_seq)
        where = consumer_offsets.c.consumer == consumer
        conn.execute(consumer_offsets.update().where(where).values(**values))

    # -- webhook deliveries -----------------------------------------------------------------

    def record_webhook_delivery(self, url_hash: str, webhook_id: str, room: str | None, event: str,
                                delivered_at: int | None = None) -> bool:
        """Remember that webhook `webhook_id` reached the URL hashed as `url_hash`; False (nothing
        written) if it was already recorded."""
        values = {"url_hash": url_hash, "webhook_id": webhook_id, "room": room, "event": event,
                  "delivered_at": _now_ms() if delivered_at is None else delivered_at}
        with self.engine.begin() as conn:
            insert = _dialect_insert(conn)
            if insert is not None:
                stmt = insert(webhook_deliveries).values(**values).on_conflict_do_nothing(
                    index_elements=["url_hash", "webhook_id"])
                return conn.execute(stmt.returning(webhook_deliveries.c.webhook_id)).first() is not None
            try:
                with conn.begin_nested():
                    conn.execute(webhook_deliveries.insert().values(**values))
                return True
            except sa.exc.IntegrityError:
                return False

    def webhook_delivered(self, url_hash: str, webhook_id: str) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(webhook_deliveries.c.webhook_id).where(
                webhook_deliveries.c.url_hash == url_hash, webhook_deliveries.c.webhook_id == webhook_id)).first()
        return row is not None

    def webhook_deliveries(self, url_hash: str | None = None) -> list[WebhookDelivery]:
        """Recorded deliveries (of one URL hash, or all), oldest first."""
        stmt = sa.select(webhook_deliveries).order_by(webhook_deliveries.c.delivered_at)
        if url_hash is not None:
            stmt = stmt.where(webhook_deliveries.c.url_hash == url_hash)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [WebhookDelivery(url_hash=r.url_hash, webhook_id=r.webhook_id, room=r.room, event=r.event,
                                delivered_at=int(r.delivered_at)) for r in rows]
