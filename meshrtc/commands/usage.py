"""`meshrtc usage`: metered usage and its cost, from the signal edge's `GET /usage`.

    meshrtc usage [--room R] [--participant I] [--from T] [--to T] [--json] [--url URL]

Times are ISO 8601 (`2025-01-31T12:00:00Z`), unix seconds, `now`, or a duration ago (`90m`,
`24h`, `1h30m`). The request carries a roomList token minted from the same credentials as
`meshrtc token create` (or `--token`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from typing import Any

from shared.auth import Claims, VideoGrant, mint_token
from shared.config import load_settings
from shared.contracts.billing import QueryError, iso_ms, parse_time

from .token import UsageError, _credentials, parse_duration


def resolve_time(text: str | None, name: str, now_ms: int | None = None) -> str | None:
    """ISO 8601 for `text`: absolute times as given, `now`, or a duration before now."""
    if text is None or not text.strip():
        return None
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = text.strip()
    if value.lower() == "now":
        return iso_ms(now_ms)
    if value[-1:].lower() in "dhms" and value[:1].isdigit():
        try:
            ago = parse_duration(value)
        except UsageError:
            raise UsageError(f"invalid --{name} {text!r}: expected ISO 8601, unix seconds, now, or a "
                             "duration ago such as 90m") from None
        return iso_ms(now_ms - int(ago.total_seconds() * 1000))
    try:
        return iso_ms(parse_time(value, f"--{name}"))
    except QueryError as exc:
        raise UsageError(str(exc)) from None


def default_url() -> str:
    if os.environ.get("MESHRTC_URL"):
        return os.environ["MESHRTC_URL"]
    settings = load_settings()
    host = settings.http_host if settings.http_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{settings.http_port}"


def http_url(url: str) -> str:
    url = url.rstrip("/")
    for ws, http in (("ws://", "http://"), ("wss://", "https://")):
        if url.startswith(ws):
            return http + url[len(ws):]
    return url if "://" in url else f"http://{url}"


def room_list_token(args: argparse.Namespace, identity: str = "meshrtc-usage") -> str:
    """--token, else a short-lived roomList token minted from the configured credentials."""
    if args.token:
        return str(args.token)
    api_key, api_secret = _credentials(args)
    claims = Claims(identity=identity, video=VideoGrant(room_list=True))
    return mint_token(api_key, api_secret, claims, ttl=timedelta(minutes=10))


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.6f} GB" if nbytes else "0"


def format_report(doc: dict[str, Any]) -> str:
    totals = doc["totals"]
    cost = totals["cost"]
    query = doc["query"]
    lines = []
    scope = ", ".join(f"{k}={query[k]}" for k in ("room", "participant", "from", "to") if query.get(k)) or "all"
    lines.append(f"usage ({scope})")
    lines.append(f"  participants:        {totals['participants']}")
    for direction in ("downstream", "upstream", "relay_out", "relay_in"):
        nbytes = totals["bytes"].get(direction, 0)
        if nbytes or direction in ("downstream", "upstream"):
            packets = totals["packets"].get(direction, 0)
            lines.append(f"  {direction + ':':<20} {nbytes:>14,d} bytes  {packets:>10,d} pkts"
                         f"  billed {cost['bandwidth_gb'].get(direction, 0):.2f} GB"
                         f"  {cost['bandwidth'].get(direction, 0):.4f} {cost['currency']}")
    lines.append(f"  connection:          {totals['connection_ms'] / 60000:.2f} min"
                 f"  billed {totals['connection_minutes']:.0f} min  {cost['connection']:.4f} {cost['currency']}")
    lines.append(f"  total:               {cost['exact_total']} {cost['currency']}")
    if doc.get("participants"):
        lines.append("")
        lines.append(f"  {'room':<20} {'identity':<20} {'downstream':>14} {'upstream':>14} {'minutes':>8} {'cost':>10}")
        for p in doc["participants"]:
            lines.append(f"  {p['room'][:20]:<20} {p['identity'][:20]:<20} {p['bytes'].get('downstream', 0):>14,d} "
                         f"{p['bytes'].get('upstream', 0):>14,d} {p['connection_minutes']:>8.0f} "
                         f"{p['cost']['total']:>10.4f}")
    rows = doc.get("rows") or []
    if rows:
        lines.append("")
        lines.append(f"  {'minute':<20} {'identity':<20} {'direction':<10} {'bytes':>14} {'packets':>9}")
        for r in rows:
            lines.append(f"  {r['minute']:<20} {r['identity'][:20]:<20} {r['direction']:<10} {r['bytes']:>14,d} "
                         f"{r['packets']:>9,d}")
        if doc.get("rows_truncated"):
            lines.append("  ... (more rows: narrow --from/--to)")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    import httpx

    try:
        params = {k: v for k, v in {
            "room": args.room, "participant": args.participant,
            "from": resolve_time(args.from_, "from"), "to": resolve_time(args.to, "to"),
            "max_rows": str(args.max_rows) if args.max_rows is not None else None,
        }.items() if v}
        token = room_list_token(args)
        url = http_url(args.url or default_url()) + "/usage"
    except UsageError as exc:
        print(f"meshrtc usage: {exc}", file=sys.stderr)
        return 2
    try:
        response = httpx.get(url, params=params, headers={"Authorization": f"Bearer {token}"},
                             timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"meshrtc usage: cannot reach {url}: {exc} (set --url or MESHRTC_URL)", file=sys.stderr)
        return 1
    try:
        doc = response.json()
    except ValueError:
        doc = {"error": response.text.strip()[:500]}
    if response.status_code != 200:
        print(f"meshrtc usage: HTTP {response.status_code}: {doc.get('error', doc)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(format_report(doc))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "usage", help="metered bandwidth, connection minutes and cost",
        description="Report metered usage from the billing service through the signal edge's GET /usage. "
        "Times: ISO 8601, unix seconds, 'now', or a duration ago (90m, 24h).")
    parser.add_argument("--room", help="only this room")
    parser.add_argument("--participant", help="only this participant (identity or sid)")
    parser.add_argument("--from", dest="from_", metavar="TIME", help="from this minute on (inclusive)")
    parser.add_argument("--to", metavar="TIME", help="up to this time (exclusive)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON document")
    parser.add_argument("--max-rows", type=int, help="per-minute rows to return (default 10000)")
    add_server_arguments(parser, timeout=20.0)
    parser.set_defaults(func=_run)


def add_server_arguments(parser: argparse.ArgumentParser, timeout: float) -> None:
    """--url, --token, --api-key/--api-secret and --timeout of the commands that read the HTTP API."""
    parser.add_argument("--url", help="server URL (default MESHRTC_URL, else MESHRTC_HTTP_HOST:MESHRTC_HTTP_PORT)")
    parser.add_argument("--token", help="access token with roomList (or roomAdmin) grant; default: minted")
    parser.add_argument("--api-key", help="API key to mint the token with")
    parser.add_argument("--api-secret", help="API secret to mint the token with")
    parser.add_argument("--timeout", type=float, default=timeout, help=f"HTTP timeout in seconds (default {timeout:g})")
