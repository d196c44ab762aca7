"""BillingStore on migrated SQLite and PostgreSQL: exactly-once apply, minute rollups, queries, publishing state."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url

from services.billing.store import (
    BillingStore,
    make_billing_engine,
    metadata,
    rollup_event_id,
    rollup_key,
    sample_minute,
)
from shared.contracts.billing import UsageQuery
from shared.db import DatabaseUnavailable, upgrade
from shared.events import UsageSample
from shared.ids import new_event_id
from tests.conftest import POSTGRES_URL, postgres_available

T = 1_735_689_600_000  # a minute boundary


def sample(start_s: float, end_s: float, nbytes: int = 1000, *, direction: str = "downstream", who: str = "alice",
           room: str = "r1", project: str = "key1", connection_ms: int = 0, track: str = "") -> UsageSample:
    return UsageSample(project=project, room=room, room_sid=f"RM_{room}", participant_sid=f"PA_{who}", identity=who,
                       track_sid=track, direction=direction, bytes=nbytes, packets=nbytes // 100,  # type: ignore[arg-type]
                       connection_ms=connection_ms, start_ms=T + int(start_s * 1000), end_ms=T + int(end_s * 1000))


_pg: dict[str, bool] = {}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh PostgreSQL schema (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'billing.db'}"
        return
    if "ok" not in _pg:
        _pg["ok"] = postgres_available()
    if not _pg["ok"]:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}")
    schema = f"b_{secrets.token_hex(6)}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[BillingStore]:
    url = db_url
    upgrade(url)
    s = BillingStore(make_billing_engine(url))
    s.check_schema()
    yield s
    s.engine.dispose()


def totals(store: BillingStore, **query: Any) -> dict[str, Any]:
    return store.usage(UsageQuery(**query))["totals"]  # type: ignore[no-any-return]


def test_tables_mirror_the_migration(store: BillingStore) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={
            "include_name": lambda name, type_, parent: type_ != "table" or name in metadata.tables}), metadata)
    assert diff == []


def test_missing_tables_name_the_fix(tmp_path: Path) -> None:
    engine = make_billing_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(DatabaseUnavailable, match="meshrtc db upgrade"):
        BillingStore(engine).check_schema()
    engine.dispose()


def test_each_sample_counts_once(store: BillingStore) -> None:
    a, b = (new_event_id(), sample(0, 5, 1000)), (new_event_id(), sample(5, 10, 2000))
    assert store.apply([a, b, a]).applied == 2  # a twice in one batch
    result = store.apply([a, b])  # redelivered
    assert (result.applied, result.duplicates) == (0, 2)
    assert totals(store)["bytes"]["downstream"] == 3000
    assert store.sample_count() == 2


def test_track_samples_are_not_billed(store: BillingStore) -> None:
    result = store.apply([(new_event_id(), sample(0, 5, 999, track="TR_x")), (new_event_id(), sample(0, 5, 10))])
    assert (result.applied, result.ignored) == (1, 1)
    assert totals(store)["bytes"]["downstream"] == 10
    assert store.apply([(new_event_id(), sample(0, 5, track="TR_y"))]).ignored == 1


def test_minute_buckets_follow_the_interval_end() -> None:
    assert sample_minute(sample(55, 60)) == T  # ends exactly at the boundary: still the first minute
    assert sample_minute(sample(58, 63)) == T + 60_000
    assert sample_minute(sample(0, 0)) == T  # empty interval


def test_rollups_per_minute_participant_direction(store: BillingStore) -> None:
    samples = [sample(i * 5, (i + 1) * 5, 100) for i in range(24)]  # two minutes of downstream
    samples += [sample(i * 5, (i + 1) * 5, 7, direction="upstream", connection_ms=5000) for i in range(24)]
    samples += [sample(0, 5, 50, who="bob")]
    store.apply([(new_event_id(), s) for s in samples])
    doc = store.usage(UsageQuery())
    rows = [(r["minute_ms"] - T, r["identity"], r["direction"], r["bytes"], r["samples"]) for r in doc["rows"]]
    assert rows == [
        (0, "alice", "downstream", 1200, 12), (0, "alice", "upstream", 84, 12), (0, "bob", "downstream", 50, 1),
        (60_000, "alice", "downstream", 1200, 12), (60_000, "alice", "upstream", 84, 12),
    ]
    assert doc["totals"]["connection_ms"] == 120_000
    assert doc["totals"]["connection_minutes"] == 2.0  # alice 2 min; bob reported no connection time
    assert doc["totals"]["participants"] == 2
    alice = next(p for p in doc["participants"] if p["identity"] == "alice")
    assert alice["bytes"]["downstream"] == 2400 and alice["packets"]["upstream"] == 0
    assert alice["first_minute"] == "2025-01-01T00:00:00Z"


def test_queries_filter_and_price_per_participant(store: BillingStore) -> None:
    store.apply([(new_event_id(), s) for s in [
        sample(0, 5, 1_000_000, who="alice", connection_ms=10_000, direction="upstream"),
        sample(0, 5, 1_000_000, who="alice"),
        sample(0, 5, 1_000_000, who="bob"),
        sample(60, 65, 1_000_000, who="carol", room="r2"),
        sample(60, 65, 5, who="dave", project="key2"),
    ]])
    doc = store.usage(UsageQuery(project="key1"))
    cost = doc["totals"]["cost"]
    # three participants with 1 MB downstream each: 0.01 GB each, rounded per usage
    assert cost["bandwidth_gb"]["downstream"] == pytest.approx(0.03)
    assert cost["bandwidth"]["downstream"] == pytest.approx(0.0036)
    assert cost["connection_minutes"] == 1.0
    assert cost["exact_total"] == "0.0041"
    assert totals(store, room="r2")["bytes"]["downstream"] == 1_000_000
    assert totals(store, participant="bob")["bytes"]["downstream"] == 1_000_000
    assert totals(store, participant="PA_alice")["bytes"]["upstream"] == 1_000_000
    assert totals(store, from_ms=T + 60_000)["participants"] == 2
    assert totals(store, from_ms=T + 30_000)["participants"] == 4  # from rounds down to its minute
    assert totals(store, to_ms=T + 60_000)["participants"] == 2
    assert totals(store, project="nobody")["bytes"]["downstream"] == 0
    limited = store.usage(UsageQuery(max_rows=2))
    assert len(limited["rows"]) == 2 and limited["rows_truncated"]
    assert limited["totals"]["participants"] == 4  # totals never truncated


def test_a_failed_transaction_leaves_nothing(store: BillingStore, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = [(new_event_id(), sample(0, 5, 1000))]

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("crash between the id insert and the rollup")

    original = store._apply_in

    def half(conn: Any, billed: Any, stamp: int) -> int:
        conn.exec_driver_sql(store._insert_ids_sql, [(batch[0][0], T, stamp)])
        broken()
        return 0

    monkeypatch.setattr(store, "_apply_in", half)
    with pytest.raises(RuntimeError):
        store.apply(batch)
    assert store.sample_count() == 0  # the id insert was rolled back with the rest
    monkeypatch.setattr(store, "_apply_in", original)
    assert store.apply(batch).applied == 1
    assert totals(store)["bytes"]["downstream"] == 1000


def test_publishing_state_and_revisions(store: BillingStore) -> None:
    store.apply([(new_event_id(), sample(0, 5, 10)), (new_event_id(), sample(60, 65, 20))])
    assert [r.minute_ms - T for r in store.pending(None)] == [0, 60_000]
    closed = store.pending(T + 60_000)  # only the first minute has ended
    assert [(r.minute_ms - T, r.revision, r.bytes) for r in closed] == [(0, 1, 10)]
    store.mark_published([(closed[0].id, closed[0].revision)])
    assert store.pending(T + 60_000) == []
    store.mark_published([(closed[0].id, closed[0].revision)])  # idempotent
    store.apply([(new_event_id(), sample(50, 55, 5))])  # a late sample for the published minute
    late = store.pending(T + 60_000)
    assert [(r.revision, r.bytes, r.published_revision) for r in late] == [(2, 15, 1)]
    assert late[0].key == closed[0].key
    # a row changed after it was read for publishing stays dirty
    store.apply([(new_event_id(), sample(50, 55, 1))])
    store.mark_published([(late[0].id, late[0].revision)])
    again = store.pending(T + 60_000)
    assert [(r.revision, r.published_revision) for r in again] == [(3, 2)]


def test_rollup_ids_are_deterministic() -> None:
    key = rollup_key(T, "key1", "r1", "RM_1", "PA_1", "downstream")
    assert len(key) == 32 and key == rollup_key(T, "key1", "r1", "RM_1", "PA_1", "downstream")
    assert key != rollup_key(T, "key1", "r1", "RM_1", "PA_1", "upstream")
    first = rollup_event_id(key, 1, T)
    assert len(first) == 26 and first == rollup_event_id(key, 1, T)
    assert first != rollup_event_id(key, 2, T)
    assert rollup_event_id(key, 1, T + 60_000) > first  # sorts by minute


def test_concurrent_writers_on_one_database(db_url: str) -> None:
    """Two stores (two billing processes) sharing the database and the same samples: SQLite
    queues them (BEGIN IMMEDIATE), PostgreSQL retries the loser of a primary-key race."""
    import threading

    url = db_url
    upgrade(url)
    stores = [BillingStore(make_billing_engine(url)) for _ in range(2)]
    ids = [new_event_id() for _ in range(200)]
    errors: list[BaseException] = []

    def work(s: BillingStore) -> None:
        try:
            for i in range(0, 200, 10):
                s.apply([(event_id, sample(0, 5, 1)) for event_id in ids[i:i + 10]])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert stores[0].sample_count() == 200
    assert totals(stores[0])["bytes"]["downstream"] == 200
    with stores[0].engine.connect() as conn:
        assert conn.execute(sa.text("select revision from usage_rollups")).scalar_one() >= 20
    for s in stores:
        s.engine.dispose()
