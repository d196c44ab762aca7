"""`meshrtc db upgrade|current`: apply and inspect the database schema (Alembic migrations)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import sqlalchemy as sa


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("db", help="database schema: apply migrations, show the revision")
    actions = parser.add_subparsers(dest="db_action", metavar="ACTION")

    upgrade = actions.add_parser("upgrade", help="migrate the database schema (default: to the head)")
    upgrade.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    _add_url(upgrade)
    upgrade.set_defaults(func=_upgrade)

    current = actions.add_parser("current", help="print the schema revision the database is at")
    _add_url(current)
    current.set_defaults(func=_current)

    def _help(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=_help)


def _add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="SQLAlchemy URL (sqlite:///path.db, postgresql://user@host/db); default $MESHRTC_DATABASE_URL",
    )


def _database_url(args: argparse.Namespace) -> str:
    if args.database_url:
        return args.database_url
    from shared.config import load_settings

    return load_settings().database_url


def _describe(revision: str | None, head: str | None) -> str:
    if revision is None:
        return "none (empty database: run `meshrtc db upgrade`)"
    if revision == head:
        return f"{revision} (head)"
    return revision


def _run(args: argparse.Namespace, action: Any) -> int:
    from alembic.util import CommandError

    from shared.db import DatabaseUnavailable

    try:
        return action(_database_url(args))
    except DatabaseUnavailable as exc:
        print(f"meshrtc: database error: {exc}", file=sys.stderr)
        return 2
    except sa.exc.SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        print(f"meshrtc: database error: {reason}", file=sys.stderr)
        return 1
    except CommandError as exc:
        print(f"meshrtc: database error: {exc}", file=sys.stderr)
        return 1


def _upgrade(args: argparse.Namespace) -> int:
    from shared import db

    def action(url: str) -> int:
        db.upgrade(url, args.revision)
        revision = db.current_revision(url)
        print(f"database {db.redact_url(url)} is at revision {_describe(revision, db.head_revision())}")
        return 0

    return _run(args, action)


def _current(args: argparse.Namespace) -> int:
    from shared import db

    def action(url: str) -> int:
        print(_describe(db.current_revision(url), db.head_revision()))
        return 0

    return _run(args, action)
