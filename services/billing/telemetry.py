"""Track analytics in SQL: the TELEMETRY_<DC> stream's samples, kept `retention` seconds, and
the per-room query behind the signal edge's `GET /stats/rooms/{room}` (docs/analytics.md).

Synchronous (the billing service calls it through `asyncio.to_thread`). One row per event id,
so a redelivered batch inserts nothing. The table mirrors `migrations/versions/0004_telemetry.py`,
which is authoritative for DDL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from shared.contracts.billing import RoomStatsQuery
from shared.db import DatabaseUnavailable, redact_url
from shared.events import Envelope, SubscriptionTelemetry, TrackTelemetry

__all__ = ["TelemetryStore", "telemetry_samples"]

MAX_SWITCHES = 200

metadata = sa.MetaData()

telemetry_samples = sa.Table(
    "telemetry_samples",
    metadata,
    sa.Column("id", sa.String(32), nullable=False),
    sa.Column("ts_ms", sa.BigInteger(), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("room", sa.Text(), nullable=False),
    sa.Column("room_sid", sa.String(64), nullable=False),
    sa.Column("track_sid", sa.String(64), nullable=False),
    sa.Column("participant_sid", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint("id", name="pk_telemetry_samples"),
    sa.Index("ix_telemetry_samples_room_ts", "project", "room", "ts_ms"),
    sa.Index("ix_telemetry_samples_ts", "ts_ms"),
)


class TelemetryStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._insert = insert(telemetry_samples).on_conflict_do_nothing(index_elements=["id"])

    def check_schema(self) -> None:
        if "telemetry_samples" not in set(sa.inspect(self.engine).get_table_names()):
            raise DatabaseUnavailable(redact_url(str(self.engine.url)),
                                      "table telemetry_samples missing: run 'meshrtc db upgrade'")

    def insert(self, envelopes: Sequence[Envelope]) -> int:
        """Store telemetry envelopes (others are ignored); returns how many rows were new."""
        rows: list[dict[str, Any]] = []
        for env in envelopes:
            payload = env.payload
            if isinstance(payload, TrackTelemetry):
                kind = "track"
            elif isinstance(payload, SubscriptionTelemetry):
                kind = "subscription"
            else:
                continue
            rows.append({"id": env.id, "ts_ms": env.ts, "kind": kind, "project": payload.project,
                         "room": payload.room, "room_sid": payload.room_sid, "track_sid": payload.track_sid,
                         "participant_sid": payload.participant_sid, "payload": payload.model_dump_json()})
        if not rows:
            return 0
        with self.engine.begin() as conn:
            result = conn.execute(self._insert, rows)
        return max(0, result.rowcount)

    def prune(self, older_than_ms: int) -> int:
        """Delete samples older than the cutoff (retention); returns how many."""
        with self.engine.begin() as conn:
            result = conn.execute(sa.delete(telemetry_samples).where(telemetry_samples.c.ts_ms < older_than_ms))
        return max(0, result.rowcount)

    def room_stats(self, query: RoomStatsQuery, now_ms: int | None = None) -> dict[str, Any]:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        since = now_ms - query.window_s * 1000
        t = telemetry_samples
        statement = (sa.select(t.c.ts_ms, t.c.kind, t.c.track_sid, t.c.participant_sid, t.c.payload)
                     .where(t.c.project == query.project, t.c.room == query.room, t.c.ts_ms >= since)
                     .order_by(t.c.ts_ms))
        latest: dict[tuple[str, str, str], dict[str, Any]] = {}
        switches: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            for ts_ms, kind, track_sid, participant_sid, raw in conn.execute(statement):
                sample = json.loads(raw)
                sample["ts_ms"] = ts_ms
                latest[(kind, track_sid, participant_sid)] = sample
                for switch in sample.get("switches", ()):
                    switches.append({"track_sid": track_sid, "participant_sid": participant_sid,
                                     "identity": sample.get("identity", ""), **switch})
        tracks = sorted((s for (kind, _, _), s in latest.items() if kind == "track"),
                        key=lambda s: (s.get("identity", ""), s["track_sid"]))
        subscriptions = sorted((s for (kind, _, _), s in latest.items() if kind == "subscription"),
                               key=lambda s: (s["track_sid"], s.get("identity", "")))
        switches.sort(key=lambda s: s["at_ms"])
        return {"room": query.room, "window_s": query.window_s, "now_ms": now_ms, "tracks": tracks,
                "subscriptions": subscriptions, "switches": switches[-MAX_SWITCHES:]}
