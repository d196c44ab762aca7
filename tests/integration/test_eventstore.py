"""Event store, migrations and `meshrtc db` against real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url

from meshrtc import cli
from shared import db
from shared import events as events_module
from shared.db import (
    DatabaseUnavailable,
    check_database,
    current_revision,
    head_revision,
    make_engine,
    upgrade,
)
from shared.events import (
    Direction,
    Envelope,
    LinkStateChanged,
    LinkStatus,
    ParticipantJoined,
    RoomCreated,
    TrackKind,
    TrackPayload,
    TrackPublished,
    Upcasters,
    UsageSample,
)
from shared.eventstore import EventStore, StoredEvent, consumer_offsets, events, metadata
from tests.conftest import POSTGRES_URL, postgres_available

_pg_state: dict[str, bool] = {}


def _pg_reachable() -> bool:
    if "ok" not in _pg_state:
        _pg_state["ok"] = postgres_available()
    return _pg_state["ok"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a fresh SQLite file, or a fresh PostgreSQL schema (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
        return
    if not _pg_reachable():
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}")
    schema = f"t_{secrets.token_hex(6)}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    upgrade(db_url)
    eng = make_engine(db_url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def store(engine: sa.Engine) -> EventStore:
    return EventStore(engine)


def _room_created(name: str = "room-1", **kw) -> Envelope:
    return Envelope.new(RoomCreated(sid=f"RM_{name}", name=name), dc="dc1", node="nd_a", room=name, **kw)


def _joined(room: str, identity: str, **kw) -> Envelope:
    payload = ParticipantJoined(sid=f"PA_{identity}", room_sid=f"RM_{room}", identity=identity, node="nd_a",
                                attributes={"k": "v"})
    return Envelope.new(payload, dc="dc2", node="nd_b", room=room, **kw)


# ---------------------------------------------------------------------------------------------
# Migrations


def test_upgrade_from_empty_creates_schema_and_is_idempotent(db_url: str) -> None:
    assert current_revision(db_url) is None
    upgrade(db_url)
    head = head_revision()
    assert head is not None and head >= "0001"  # later migrations stack on the event store
    assert current_revision(db_url) == head
    upgrade(db_url)  # already at head: no-op
    assert current_revision(db_url) == head

    eng = make_engine(db_url)
    try:
        inspector = sa.inspect(eng)
        assert {"events", "consumer_offsets", "alembic_version"} <= set(inspector.get_table_names())
        assert {c["name"] for c in inspector.get_columns("events")} == {
            "seq", "id", "type", "ts", "dc", "node", "room", "v", "payload", "stored_at"}
        assert {c["name"] for c in inspector.get_columns("consumer_offsets")} == {
            "consumer", "stream", "last_seq", "updated_at"}
        indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("events")}
        assert indexes["ix_events_room_seq"] == ["room", "seq"]
        assert indexes["ix_events_type"] == ["type"]
        assert [u["column_names"] for u in inspector.get_unique_constraints("events")] == [["id"]]
        # The Table objects used by the store mirror the migration.
        with eng.connect() as conn:
            # only the event store's own tables: other services' migrations add theirs
            context = MigrationContext.configure(conn, opts={
                "include_name": lambda name, kind, parent: kind != "table" or name in metadata.tables})
            assert compare_metadata(context, metadata) == []
        # The migration also goes down cleanly.
        with eng.begin() as conn:
            config = db.alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        assert not {"events", "consumer_offsets"} & set(sa.inspect(eng).get_table_names())
    finally:
        eng.dispose()
    assert current_revision(db_url) is None


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with eng.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
    finally:
        eng.dispose()


def test_postgres_urls_use_psycopg3() -> None:
    for url in ("postgres://u:pw@h:5432/d", "postgresql://u:pw@h:5432/d", "postgresql+psycopg://u:pw@h:5432/d"):
        assert db.normalize_url(url) == "postgresql+psycopg://u:pw@h:5432/d"
        eng = make_engine(url)
        assert (eng.dialect.name, eng.dialect.driver) == ("postgresql", "psycopg")
        eng.dispose()


# ---------------------------------------------------------------------------------------------
# Append and read


def test_append_read_round_trip_keeps_every_field(store: EventStore) -> None:
    track = TrackPayload(sid="TR_1", participant_sid="PA_1", name="cam", kind=TrackKind.VIDEO, width=640,
                         height=480, simulcast=True, mime_type="video/VP8", info="AAEC")
    envs = [
        _room_created("weird.room *>/ é", ts=1_700_000_000_123),
        _joined("weird.room *>/ é", "alice"),
        Envelope.new(TrackPublished(track=track, node="nd_a"), dc="dc1", node="nd_a",
                     room="weird.room *>/ é"),
        Envelope.new(LinkStateChanged(src_dc="dc1", dst_dc="dc2", status=LinkStatus.DEGRADED, rtt_ms=12.5,
                                      loss=0.25), dc="dc1", node="relay-1"),  # room None
        Envelope.new(UsageSample(project="p", room="r", direction=Direction.UPSTREAM, bytes=2**40, start_ms=1,
                                 end_ms=2), dc="dc3", node="nd_c", room="r"),
    ]
    for env in envs:
        assert store.append(env) is True

    stored = store.read()
    assert [s.envelope.id for s in stored] == [e.id for e in envs]
    assert all(isinstance(s, StoredEvent) for s in stored)
    seqs = [s.seq for s in stored]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for got, env in zip(stored, envs, strict=True):
        assert got.envelope == env
        assert got.envelope.to_dict() == env.to_dict()
        assert got.envelope.payload == env.payload
        assert type(got.envelope.payload) is type(env.payload)
        assert got.stored_at > 0
    assert stored[3].envelope.room is None
    assert stored[0].envelope.ts == 1_700_000_000_123

    got = store.get(envs[2].id)
    assert got is not None and got.seq == seqs[2] and got.envelope.to_dict() == envs[2].to_dict()
    assert store.get("01NOTSTORED0000000000000000") is None
    assert store.last_seq() == seqs[-1]
    assert store.count() == len(envs)


def test_empty_store(store: EventStore) -> None:
    assert store.read() == []
    assert store.last_seq() == 0
    assert store.count() == 0


def test_same_event_is_stored_once(store: EventStore) -> None:
    e1, e2, e3 = _room_created("a"), _room_created("b"), _room_created("c")
    assert store.append(e1) is True
    first_seq = store.get(e1.id).seq
    assert store.append(e1) is False
    assert store.count() == 1

    assert store.append_many([e1, e2, e3, e3]) == 2  # e1 already there, e3 twice in the batch
    assert store.count() == 3
    assert store.append_many([e1, e2]) == 0
    assert store.append_many([]) == 0
    assert [s.envelope.id for s in store.read()] == [e1.id, e2.id, e3.id]
    assert store.get(e1.id).seq == first_seq


def test_read_filters(store: EventStore) -> None:
    a1 = _room_created("a", ts=1000)
    b1 = _room_created("b", ts=2000)
    a2 = _joined("a", "alice", ts=3000)
    b2 = _joined("b", "bob", ts=4000)
    n1 = Envelope.new(LinkStateChanged(src_dc="dc1", dst_dc="dc2", status=LinkStatus.DOWN), dc="dc1",
                      node="r", ts=5000)
    a3 = _joined("a", "carol", ts=6000)
    assert store.append_many([a1, b1, a2, b2, n1, a3]) == 6
    ids = lambda stored: [s.envelope.id for s in stored]  # noqa: E731
    seq = {s.envelope.id: s.seq for s in store.read()}

    assert ids(store.read(room="a")) == [a1.id, a2.id, a3.id]
    assert ids(store.read(room="zzz")) == []
    assert ids(store.read(types=["participant.joined"])) == [a2.id, b2.id, a3.id]
    assert ids(store.read(types={"room.created", "link.state"})) == [a1.id, b1.id, n1.id]
    assert ids(store.read(types=[])) == []
    assert ids(store.read(room="b", types=["participant.joined"])) == [b2.id]
    assert ids(store.read(after_seq=seq[a2.id])) == [b2.id, n1.id, a3.id]
    assert ids(store.read(after_seq=seq[a3.id])) == []
    assert ids(store.read(since_ts=4000)) == [b2.id, n1.id, a3.id]
    assert ids(store.read(limit=2)) == [a1.id, b1.id]
    assert ids(store.read(limit=0)) == []
    assert ids(store.read(after_seq=seq[a1.id], room="a", limit=1)) == [a2.id]

    # Paging on the last returned seq walks everything exactly once.
    paged, cursor = [], 0
    while page := store.read(cursor, limit=4):
        paged += ids(page)
        cursor = page[-1].seq
    assert paged == [a1.id, b1.id, a2.id, b2.id, n1.id, a3.id]


def test_undecodable_rows_are_skipped_with_a_warning(store: EventStore, engine: sa.Engine,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    good1 = _room_created("a")
    store.append(good1)
    bad_rows = [
        {"id": "BAD1", "type": "no.such.event", "payload": "{}", "v": 1},
        {"id": "BAD2", "type": "room.created", "payload": "{not json", "v": 1},
        {"id": "BAD3", "type": "room.created", "payload": json.dumps({"sid": "x", "name": "y"}), "v": 99},
        {"id": "BAD4", "type": "room.created", "payload": json.dumps({"name": "missing sid"}), "v": 1},
    ]
    with engine.begin() as conn:
        for row in bad_rows:
            conn.execute(events.insert().values(ts=1, dc="dc1", node="n", room="a", stored_at=1, **row))
    good2 = _room_created("b")
    store.append(good2)

    with caplog.at_level(logging.WARNING, logger="shared.eventstore"):
        assert [s.envelope.id for s in store.read()] == [good1.id, good2.id]
        assert [s.envelope.id for s in store.read(store.get(good1.id).seq, limit=1)] == [good2.id]
        assert store.get("BAD1") is None
    logged = caplog.text
    for row in bad_rows:
        assert row["id"] in logged
    assert store.count() == 6  # skipped, not deleted


def test_an_older_stored_version_is_upcast_on_read(store: EventStore, engine: sa.Engine,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A row written by an older build (room.created v1 named the room `room`) reads as the
    current schema (a pretend v2 naming it `name`), through the upcaster registry."""
    fresh = Upcasters()
    monkeypatch.setattr(events_module, "UPCASTERS", fresh)
    monkeypatch.setattr(RoomCreated, "VERSION", 2)
    fresh.register(RoomCreated.TYPE, 1, lambda payload: {**payload, "name": payload.pop("room")})
    with engine.begin() as conn:
        conn.execute(events.insert().values(id="OLD1", type="room.created", ts=5, dc="dc1", node="n", room="r",
                                            v=1, payload=json.dumps({"sid": "RM_old", "room": "r"}), stored_at=1))
    stored = store.get("OLD1")
    assert stored is not None
    assert stored.envelope.payload == RoomCreated(sid="RM_old", name="r")
    assert stored.envelope.v == 2
    assert [s.envelope.id for s in store.read(types=["room.created"])] == ["OLD1"]


def test_concurrent_appends_from_threads(store: EventStore) -> None:
    per_thread, threads = 40, 4
    batches = [[_room_created(f"r{t}-{i}") for i in range(per_thread)] for t in range(threads)]
    errors: list[BaseException] = []

    def work(batch: list[Envelope]) -> None:
        try:
            for i, env in enumerate(batch):
                assert store.append(env) is True
                if i % 10 == 0:
                    assert store.append(env) is False
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(b,)) for b in batches]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    stored = store.read()
    assert len(stored) == store.count() == per_thread * threads
    assert len({s.seq for s in stored}) == len(stored)
    for batch in batches:  # each writer's events appear in its own order
        order = {s.envelope.id: s.seq for s in stored}
        assert [order[e.id] for e in batch] == sorted(order[e.id] for e in batch)


# ---------------------------------------------------------------------------------------------
# Consumer offsets


def test_offsets_upsert(store: EventStore, engine: sa.Engine) -> None:
    assert store.get_offset("room-svc") == 0
    store.set_offset("room-svc", "EVENTS_dc1", 5)
    assert store.get_offset("room-svc") == 5
    store.set_offset("room-svc", "EVENTS_dc1", 10)
    assert store.get_offset("room-svc") == 10
    store.set_offset("room-svc", "EVENTS_dc1", 3)  # plain set: an explicit rewind is allowed
    assert store.get_offset("room-svc") == 3
    store.set_offset("room-svc", "EVENTS_dc1", 1, monotonic=True)
    assert store.get_offset("room-svc") == 3
    store.set_offset("room-svc", "EVENTS_all", 7, monotonic=True)
    assert store.get_offset("room-svc") == 7
    store.set_offset("billing", "USAGE_dc1", 42)
    assert store.get_offset("billing") == 42
    assert store.get_offset("room-svc") == 7
    with engine.connect() as conn:
        rows = {r.consumer: r for r in conn.execute(sa.select(consumer_offsets))}
    assert set(rows) == {"room-svc", "billing"}
    assert rows["room-svc"].stream == "EVENTS_all" and rows["room-svc"].updated_at > 0


def test_append_and_set_offset_is_atomic(store: EventStore) -> None:
    e1, e2, e3 = _room_created("a"), _room_created("b"), _room_created("c")
    assert store.append_and_set_offset(e1, "room-svc", "EVENTS", 1) is True
    assert store.get_offset("room-svc") == 1

    # Redelivery of an event already applied (crash after commit, before ack): not stored again,
    # the offset still advances to the redelivered message's stream sequence.
    assert store.append_and_set_offset(e1, "room-svc", "EVENTS", 2) is False
    assert store.count() == 1
    assert store.get_offset("room-svc") == 2

    assert store.append_and_set_offset(e2, "room-svc", "EVENTS", 3) is True
    # A late redelivery of an older message never moves the offset back.
    assert store.append_and_set_offset(e2, "room-svc", "EVENTS", 2) is False
    assert store.get_offset("room-svc") == 3

    # The offset write fails (NOT NULL stream) after the event insert: neither is kept.
    with pytest.raises(sa.exc.IntegrityError):
        store.append_and_set_offset(e3, "room-svc", None, 4)  # type: ignore[arg-type]
    assert store.get(e3.id) is None
    assert store.count() == 2
    assert store.get_offset("room-svc") == 3
    # ...so the redelivery applies it exactly once.
    assert store.append_and_set_offset(e3, "room-svc", "EVENTS", 4) is True
    assert store.count() == 3
    assert store.get_offset("room-svc") == 4


# ---------------------------------------------------------------------------------------------
# Unreachable or invalid databases


def test_check_database_ok(db_url: str) -> None:
    check_database(db_url)


def test_check_database_unreachable_postgres() -> None:
    url = "postgresql://meshrtc:s3cret-pw@127.0.0.1:1/meshrtc"
    with pytest.raises(DatabaseUnavailable) as info:
        check_database(url)
    message = str(info.value)
    assert message.startswith(
        "MESHRTC_DATABASE_URL postgresql://meshrtc:***@127.0.0.1:1/meshrtc: cannot connect")
    assert "s3cret-pw" not in message
    assert "\n" not in message
    assert "refused" in message.lower()
    assert info.value.url == "postgresql://meshrtc:***@127.0.0.1:1/meshrtc"
    # upgrade and current_revision fail the same way.
    with pytest.raises(DatabaseUnavailable, match="MESHRTC_DATABASE_URL"):
        upgrade(url)
    with pytest.raises(DatabaseUnavailable, match="MESHRTC_DATABASE_URL"):
        current_revision(url)


@pytest.mark.parametrize(
    "url",
    ["this is not a url", "", "nosuchdb://host/db", "postgresql://u:pw@127.0.0.1:notaport/db",
     "sqlite:////nonexistent-dir/sub/x.db"],
)
def test_check_database_bad_url(url: str) -> None:
    with pytest.raises(DatabaseUnavailable) as info:
        check_database(url)
    message = str(info.value)
    assert message.startswith("MESHRTC_DATABASE_URL ")
    assert "\n" not in message
    assert "pw@" not in message
    assert ("invalid URL" in message) or ("cannot connect" in message)


# ---------------------------------------------------------------------------------------------
# `meshrtc db`


@pytest.fixture
def only_db_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the CLI with just `db`, so this test does not depend on other subcommands."""
    monkeypatch.setattr(cli, "COMMANDS", ["db"])


@pytest.mark.usefixtures("only_db_command")
def test_cli_db_upgrade_and_current(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["db", "current", "--database-url", db_url]) == 0
    assert capsys.readouterr().out.startswith("none")

    assert cli.main(["db", "upgrade", "--database-url", db_url]) == 0
    assert f"{head_revision()} (head)" in capsys.readouterr().out
    assert cli.main(["db", "upgrade", "--database-url", db_url]) == 0  # idempotent
    capsys.readouterr()

    assert cli.main(["db", "current", "--database-url", db_url]) == 0
    assert capsys.readouterr().out.strip() == f"{head_revision()} (head)"


@pytest.mark.usefixtures("only_db_command")
def test_cli_db_url_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("MESHRTC_DATABASE_URL", url)
    assert cli.main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert current_revision(url) == head_revision()
    assert cli.main(["db", "current"]) == 0
    assert capsys.readouterr().out.strip() == f"{head_revision()} (head)"


@pytest.mark.usefixtures("only_db_command")
@pytest.mark.parametrize("action", ["upgrade", "current"])
def test_cli_db_unreachable(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["db", action, "--database-url", "postgresql://u:pw@127.0.0.1:1/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("meshrtc: database error: MESHRTC_DATABASE_URL postgresql://u:***@127.0.0.1:1/x: ")
    assert "pw@" not in err
