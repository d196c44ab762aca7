"""`meshrtc webhooks replay --since T [--url URL]`: re-send stored events' webhooks, same ids.

Reads the SQL event store (MESHRTC_DATABASE_URL), maps every webhook-relevant event at or after T
exactly as the room service's webhook workers do (services/room/webhooks.py), signs it with the
first API key and POSTs it, in order, to each URL (default: MESHRTC_WEBHOOK_URLS). Receivers see
the ids they saw the first time, so they can dedupe.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from datetime import datetime

from shared.errors import ToolError

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


class UsageError(ToolError):
    pass


def parse_since(text: str, now: float | None = None) -> int:
    """Unix ms for `--since`: ISO 8601 (`2025-01-31T12:00:00Z`; without an offset: local time),
    unix seconds (`1738324800`), or a time ago (`10m`, `2h`, `1h30m`, `45s`, `7d`)."""
    spec = text.strip()
    now = time.time() if now is None else now
    if re.fullmatch(r"\d+(\.\d+)?", spec):
        return int(float(spec) * 1000)
    if re.fullmatch(r"(\d+(\.\d+)?[dhms])+", spec.lower()):
        ago = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([dhms])", spec.lower()))
        return int((now - ago) * 1000)
    try:
        moment = datetime.fromisoformat(spec.replace("z", "Z"))
    except ValueError:
        raise UsageError(f"invalid --since {text!r}: expected an ISO time (2025-01-31T12:00:00Z), "
                         "unix seconds, or a time ago like 10m, 2h, 1d") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time
    return int(moment.timestamp() * 1000)


def _credentials(args: argparse.Namespace, keys: dict[str, str]) -> tuple[str, str]:
    if args.api_key and args.api_secret:
        return args.api_key, args.api_secret
    if args.api_secret:
        raise UsageError("--api-secret needs --api-key")
    if args.api_key:
        if args.api_key not in keys:
            raise UsageError(f"no secret known for API key {args.api_key!r}: pass --api-secret")
        return args.api_key, keys[args.api_key]
    if keys:
        return next(iter(keys.items()))
    return "devkey", "secret"


def _replay(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from shared.config import load_settings
    from shared.db import DatabaseUnavailable, check_database, make_engine, redact_url

    settings = load_settings()
    try:
        since_ms = parse_since(args.since)
        api_key, api_secret = _credentials(args, settings.api_keys)
    except UsageError as exc:
        print(f"meshrtc webhooks replay: {exc}", file=sys.stderr)
        return 2
    urls = list(dict.fromkeys(args.url or settings.webhook_urls))
    if not urls:
        print("meshrtc webhooks replay: no webhook URL: pass --url or set MESHRTC_WEBHOOK_URLS", file=sys.stderr)
        return 2
    database_url = args.database_url or settings.database_url

    from services.room.webhooks import replay
    from shared.eventstore import EventStore

    try:
        check_database(database_url)
        engine = make_engine(database_url)
        try:
            results = asyncio.run(replay(EventStore(engine), urls, since_ms, api_key=api_key,
                                         api_secret=api_secret, room=args.room))
        finally:
            engine.dispose()
    except DatabaseUnavailable as exc:
        print(f"meshrtc: database error: {exc}", file=sys.stderr)
        return 2
    except sa.exc.SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        print(f"meshrtc: database error ({redact_url(database_url)}): {reason} "
              "(is the schema current? `meshrtc db upgrade`)", file=sys.stderr)
        return 1
    since = datetime.fromtimestamp(since_ms / 1000).astimezone().isoformat(timespec="seconds")
    status = 0
    for result in results:
        print(f"sent {result.sent} webhook(s) since {since} to {result.url}")
        if result.failed:
            print(f"meshrtc: webhooks to {result.url} stopped after {result.sent}: {result.failed}", file=sys.stderr)
            status = 1
    return status


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("webhooks", help="webhooks: replay stored events to receivers")
    actions = parser.add_subparsers(dest="webhooks_command", metavar="SUBCOMMAND")

    def show_help(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=show_help)

    replay = actions.add_parser(
        "replay", help="re-send the webhooks of stored events since a time (same ids)",
        description="Re-send, in order and with their original ids, the webhooks of every event stored "
        "since --since, to --url (default MESHRTC_WEBHOOK_URLS). Signed with --api-key, else the first "
        "MESHRTC_API_KEYS entry, else devkey/secret.")
    replay.add_argument("--since", required=True, metavar="T",
                        help="ISO time (2025-01-31T12:00:00Z), unix seconds, or a time ago (10m, 2h, 1d)")
    replay.add_argument("--url", action="append", metavar="URL", help="receiver (repeatable)")
    replay.add_argument("--room", metavar="NAME", help="only this room's webhooks")
    replay.add_argument("--database-url", metavar="URL", help="event store (default $MESHRTC_DATABASE_URL)")
    replay.add_argument("--api-key", help="API key that signs the webhooks")
    replay.add_argument("--api-secret", help="its secret")
    replay.set_defaults(func=_replay)
