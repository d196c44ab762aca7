"""Alembic environment for meshrtc.

Runs in two ways:
- programmatically (`shared.db.upgrade(url)`): the caller passes an open connection in
  `config.attributes["connection"]`; nothing is read from files or the environment.
- from the developer CLI (`alembic upgrade head` at the repo root, using alembic.ini): the URL
  comes from `-x database_url=...`, else MESHRTC_DATABASE_URL, else `sqlalchemy.url` in the ini,
  else `sqlite:///meshrtc.db`.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from shared.db import make_engine, normalize_url
from shared.eventstore import metadata as eventstore_metadata

config = context.config

if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# Used only by `alembic revision --autogenerate`; revisions in versions/ are authoritative.
target_metadata = eventstore_metadata


def _database_url() -> str:
    x_args = context.get_x_argument(as_dictionary=True)
    return normalize_url(
        x_args.get("database_url")
        or os.environ.get("MESHRTC_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
        or "sqlite:///meshrtc.db"
    )


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_database_url())
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
