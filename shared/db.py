"""Database engines and schema migrations.

SQLite (embedded, `sqlite:///path.db`) and PostgreSQL (`postgresql://…`, driven by psycopg 3) are
supported. The schema is only ever created by Alembic: `upgrade(url)` runs the revisions in the
`migrations` package programmatically, so no alembic.ini is needed at runtime.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool

from shared.errors import StoreError

URL_VARIABLE = "MESHRTC_DATABASE_URL"
SQLITE_BUSY_TIMEOUT_MS = 5000
PG_CONNECT_TIMEOUT_S = 5


class DatabaseUnavailable(StoreError, RuntimeError):
    """The database cannot be reached (or its URL is unusable). The message is one line naming
    MESHRTC_DATABASE_URL, the URL without its password, and the reason."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"{URL_VARIABLE} {url or '(empty)'}: {reason}")


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***` (works on strings that are not valid URLs too)."""
    text = str(url)
    match = re.match(r"^([^:/?#]+://)([^/?#]*)(.*)$", text, re.S)
    if match:
        scheme, netloc, rest = match.groups()
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{host}"
        text = scheme + netloc + rest
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", text)


def normalize_url(url: str) -> str:
    """Rewrite `postgres://` and driver-less `postgresql://` to psycopg 3 (`postgresql+psycopg://`)."""
    url = url.strip()
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _is_sqlite_memory(url: sa.URL) -> bool:
    return url.database in (None, "", ":memory:") or (url.query.get("mode") == "memory")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """A SQLAlchemy 2 engine for `url`.

    SQLite connections get WAL journaling, foreign keys and a busy timeout (so threads and
    processes sharing one file wait rather than fail). An in-memory SQLite database is shared by
    all threads of the engine. PostgreSQL URLs are rewritten to psycopg 3 and get a connect
    timeout and pre-ping (survives a database restart). Extra `kwargs` go to `create_engine`.
    """
    parsed = make_url(normalize_url(url))
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if _is_sqlite_memory(parsed):
            kwargs.setdefault("poolclass", StaticPool)
            connect_args = dict(kwargs.pop("connect_args", {}))
            connect_args.setdefault("check_same_thread", False)
            kwargs["connect_args"] = connect_args
        engine = sa.create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    if backend == "postgresql":
        connect_args = dict(kwargs.pop("connect_args", {}))
        if "connect_timeout" not in parsed.query:
            connect_args.setdefault("connect_timeout", PG_CONNECT_TIMEOUT_S)
        kwargs["connect_args"] = connect_args
        kwargs.setdefault("pool_pre_ping", True)
        return sa.create_engine(parsed, **kwargs)
    return sa.create_engine(parsed, **kwargs)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")  # stays "memory" for in-memory databases
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, sa.exc.NoSuchModuleError):
        return f"invalid URL: unsupported database scheme ({_one_line(str(exc))})"
    if isinstance(exc, sa.exc.ArgumentError):
        return f"invalid URL: {_one_line(str(exc))}"
    if isinstance(exc, ValueError):
        return f"invalid URL: {_one_line(str(exc))}"
    if isinstance(exc, ImportError):
        return f"invalid URL: database driver not installed ({_one_line(str(exc))})"
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        return f"cannot connect: {_one_line(str(exc.orig))}"
    return f"cannot connect: {_one_line(str(exc))}"


# What a bad URL or an unreachable database raises while building an engine or connecting.
_CONNECT_ERRORS = (sa.exc.ArgumentError, sa.exc.DBAPIError, ImportError, ValueError, OSError)


def _engine_or_raise(url: str) -> Engine:
    try:
        return make_engine(url)
    except _CONNECT_ERRORS as exc:
        raise DatabaseUnavailable(redact_url(url), _reason(exc)) from exc


def check_database(url: str) -> None:
    """Connect once; raise `DatabaseUnavailable` if the URL is invalid or the database unreachable."""
    engine = _engine_or_raise(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except _CONNECT_ERRORS as exc:
        raise DatabaseUnavailable(redact_url(url), _reason(exc)) from exc
    finally:
        engine.dispose()


def migrations_dir() -> Path:
    import migrations

    return Path(migrations.__file__).resolve().parent


def alembic_config() -> Any:
    """An `alembic.config.Config` built in code, pointing at the `migrations` package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(url: str | Engine, revision: str = "head") -> None:
    """Run the Alembic migrations up to `revision` (no-op when already there)."""
    from alembic import command

    config = alembic_config()
    engine, owned = _resolve(url)
    try:
        try:
            connection = engine.connect()
        except _CONNECT_ERRORS as exc:
            raise DatabaseUnavailable(_display(url), _reason(exc)) from exc
        with connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.commit()
    finally:
        if owned:
            engine.dispose()


def current_revision(url: str | Engine) -> str | None:
    """The revision the database is at, or None for a database never migrated."""
    from alembic.runtime.migration import MigrationContext

    engine, owned = _resolve(url)
    try:
        try:
            connection = engine.connect()
        except _CONNECT_ERRORS as exc:
            raise DatabaseUnavailable(_display(url), _reason(exc)) from exc
        with connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        if owned:
            engine.dispose()


def _display(url: str | Engine) -> str:
    if isinstance(url, Engine):
        return url.url.render_as_string(hide_password=True)
    return redact_url(url)


def _resolve(url: str | Engine) -> tuple[Engine, bool]:
    if isinstance(url, Engine):
        return url, False
    return _engine_or_raise(url), True
