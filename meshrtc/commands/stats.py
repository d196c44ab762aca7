"""`meshrtc stats room R`: a live terminal view of a room's track analytics, from the signal
edge's `GET /stats/rooms/{room}` (docs/analytics.md), refreshed every `--interval` seconds.

    meshrtc stats room R [--interval 2] [--window 15] [--once] [--json] [--url URL]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from .token import UsageError
from .usage import add_server_arguments, default_url, http_url, room_list_token

LAYER_NAMES = {-1: "-", 0: "q", 1: "h", 2: "f"}
CLEAR = "\x1b[H\x1b[2J"


def _layer(value: Any) -> str:
    return LAYER_NAMES.get(value, str(value)) if value is not None else "all"


def _kbps(bps: float) -> str:
    return f"{bps / 1000:,.0f}"


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S")


def format_room(doc: dict[str, Any]) -> str:
    """The room document as a terminal table: tracks as received from publishers, then each
    subscriber's leg, then recent layer switches."""
    lines = [f"room {doc['room']}  (samples of the last {doc['window_s']} s, {_clock(doc['now_ms'])} UTC)", ""]
    tracks = doc.get("tracks") or []
    lines.append(f"{'publisher':<16} {'track':<18} {'kind':<5} {'kbps':>7} {'fps':>5} {'loss%':>6} {'jit ms':>6} "
                 f"{'PLI':>4} {'subs':>4}  layers (fps)        dynacast")
    for t in tracks:
        layers = " ".join(f"{_layer(x['layer'])}:{x['fps']:.0f}{'' if x['active'] else '(off)'}"
                          for x in t.get("layers") or [])
        dynacast = _layer(t.get("dynacast_max_layer")) if t.get("layers") else ""
        lines.append(f"{t.get('identity', '')[:16]:<16} {t['track_sid'][:18]:<18} {t['kind']:<5} "
                     f"{_kbps(t['bitrate_bps']):>7} {t['fps']:>5.1f} {100 * t['packet_loss']:>6.1f} "
                     f"{t['jitter_ms']:>6.1f} {t['plis_total']:>4} {t['subscribers']:>4}  {layers:<20} {dynacast}")
    if not tracks:
        lines.append("  (no tracks reported)")
    lines.append("")
    subs = doc.get("subscriptions") or []
    lines.append(f"{'subscriber':<16} {'track':<18} {'kbps':>7} {'fps':>5} {'loss%':>6} {'jit ms':>6} {'rtt ms':>6} "
                 f"{'NACK':>5} {'PLI':>4} {'FIR':>4} layer (want/cap)")
    for s in subs:
        state = "paused" if s.get("paused") else (f"{_layer(s['layer'])} ({_layer(s['requested_layer'])}/"
                                                   f"{_layer(s['bandwidth_cap'])})")
        lines.append(f"{s.get('identity', '')[:16]:<16} {s['track_sid'][:18]:<18} {_kbps(s['bitrate_bps']):>7} "
                     f"{s['fps']:>5.1f} {100 * s['packet_loss']:>6.1f} {s['jitter_ms']:>6.1f} {s['rtt_ms']:>6.0f} "
                     f"{s['nacks_total']:>5} {s['plis_total']:>4} {s['firs_total']:>4} {state}")
    if not subs:
        lines.append("  (no subscriptions reported)")
    switches = doc.get("switches") or []
    if switches:
        lines.append("")
        lines.append("layer switches")
        for w in switches[-10:]:
            lines.append(f"  {_clock(w['at_ms'])} {w.get('identity', '')[:16]:<16} {w['track_sid'][:18]:<18} "
                         f"{_layer(w['from_layer'])} -> {_layer(w['to_layer'])}  {w['reason']}")
    return "\n".join(lines)


def _fetch(url: str, token: str, window: int, timeout: float) -> dict[str, Any]:
    import httpx

    try:
        response = httpx.get(url, params={"window": str(window)}, headers={"Authorization": f"Bearer {token}"},
                             timeout=timeout)
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach {url}: {exc} (set --url or MESHRTC_URL)") from None
    try:
        doc: dict[str, Any] = response.json()
    except ValueError:
        doc = {"error": response.text.strip()[:500]}
    if response.status_code != 200:
        raise UsageError(f"HTTP {response.status_code}: {doc.get('error', doc)}")
    return doc


def _run_room(args: argparse.Namespace) -> int:
    try:
        token = room_list_token(args, identity="meshrtc-stats")
        url = http_url(args.url or default_url()) + "/stats/rooms/" + quote(args.room, safe="")
        while True:
            doc = _fetch(url, token, args.window, args.timeout)
            text = json.dumps(doc, indent=2) if args.json else format_room(doc)
            if args.once or args.json:
                print(text)
                return 0
            sys.stdout.write(CLEAR + text + "\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except UsageError as exc:
        print(f"meshrtc stats: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("stats", help="track analytics: a live view of a room")
    actions = parser.add_subparsers(dest="stats_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)
    room = actions.add_parser("room", help="live per-track and per-subscriber stats of a room (Ctrl-C to quit)")
    room.add_argument("room", help="room name")
    room.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    room.add_argument("--window", type=int, default=15, help="use samples of the last N seconds (default 15)")
    room.add_argument("--once", action="store_true", help="print one view and exit")
    room.add_argument("--json", action="store_true", help="print the API's JSON document once")
    add_server_arguments(room, timeout=10.0)
    room.set_defaults(func=_run_room)
