"""`meshrtc room list|create|delete`: rooms through the RoomService API (LiveKit's `livekit-api`).

The helpers here (connection options, credentials, running one API call with one-line errors) are
shared with `meshrtc participant`. Exit codes: 0 done, 1 the server refused (room not found,
bad credentials...), 2 bad usage or the server cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shared.errors import ToolError

DEFAULT_URL = "http://127.0.0.1:7880"
DEV_KEY, DEV_SECRET = "devkey", "secret"
TIMEOUT_S = 10.0


class CliError(ToolError):
    """One line for stderr (prefixed `meshrtc: `) and the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# ---------------------------------------------------------------------------------------------
# Shared with meshrtc/commands/participant.py


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None,
                        help=f"server URL (default $MESHRTC_URL, else {DEFAULT_URL}); ws:// works too")
    parser.add_argument("--api-key", help="API key (default: first of MESHRTC_API_KEYS, else devkey)")
    parser.add_argument("--api-secret", help="API secret (default: the secret of that key, else secret)")
    parser.add_argument("--json", action="store_true", help="print JSON (protobuf JSON of the answers)")


def server_url(args: argparse.Namespace) -> str:
    return (args.url or os.environ.get("MESHRTC_URL") or DEFAULT_URL).rstrip("/")


def credentials(args: argparse.Namespace) -> tuple[str, str]:
    if args.api_key and args.api_secret:
        return args.api_key, args.api_secret
    if args.api_secret:
        raise CliError("--api-secret needs --api-key", 2)
    from shared.config import load_settings

    keys = load_settings().api_keys
    if args.api_key:
        if args.api_key not in keys:
            raise CliError(f"no secret known for API key {args.api_key!r}: pass --api-secret", 2)
        return args.api_key, keys[args.api_key]
    if keys:
        return next(iter(keys.items()))
    return DEV_KEY, DEV_SECRET


def not_found_message(msg: str, room: str, identity: str = "", track: str = "") -> str:
    """The server's not_found message, said about what the user named."""
    lowered = msg.lower()
    if "participant" in lowered and identity:
        return f"participant {identity} is not in room {room}"
    if "track" in lowered and track:
        return f"track {track} of {identity} does not exist in room {room}"
    return f"room {room} does not exist"


def run_api(args: argparse.Namespace, call: Callable[[Any], Awaitable[int]],
            not_found: Callable[[str], str]) -> int:
    """Run `call(lkapi)` against the server; API and connection failures become one line on stderr."""
    try:
        return asyncio.run(_run_api(args, call, not_found))
    except CliError as exc:
        print(f"meshrtc: {exc.message}", file=sys.stderr)
        return exc.code


async def _run_api(args: argparse.Namespace, call: Callable[[Any], Awaitable[int]],
                   not_found: Callable[[str], str]) -> int:
    try:
        import aiohttp
        from livekit import api
        from livekit.api.twirp_client import ServerError
    except ImportError as exc:  # pragma: no cover - livekit-api ships with the test extras
        raise CliError(f"this command needs the livekit-api package ({exc}): pip install livekit-api", 2) from None

    url = server_url(args)
    key, secret = credentials(args)
    try:
        client = api.LiveKitAPI(url, key, secret, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S), failover=False)
    except ValueError as exc:
        raise CliError(f"invalid --url {url!r}: {exc}", 2) from None
    try:
        return await call(client)
    except ServerError as exc:
        if exc.code == "not_found":
            raise CliError(not_found(exc.message)) from None
        if exc.code in ("unauthenticated", "permission_denied") or exc.status == 401:
            raise CliError(f"{url} refused API key {key!r}: {exc.message or exc.code}") from None
        raise CliError(f"{url} answered {exc.code}: {exc.message or f'HTTP {exc.status}'}") from None
    except aiohttp.InvalidURL:
        raise CliError(f"invalid --url {url!r}", 2) from None
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, ConnectionRefusedError):
            reason = "connection refused"
        else:
            reason = (exc.os_error.strerror if exc.os_error and exc.os_error.strerror else str(exc)).lower()
        raise CliError(f"cannot reach the server at {url} ({reason}): is it running? (--url, MESHRTC_URL)",
                       2) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise CliError(f"cannot talk to the server at {url}: {type(exc).__name__}: {exc}", 2) from None
    except TimeoutError:
        raise CliError(f"no answer from the server at {url} within {TIMEOUT_S:.0f} s", 2) from None
    finally:
        await client.aclose()


def to_dict(message: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message)


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def when(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


# ---------------------------------------------------------------------------------------------
# room commands


def _list(args: argparse.Namespace) -> int:
    async def call(client: Any) -> int:
        from livekit import api

        response = await client.room.list_rooms(api.ListRoomsRequest(names=args.names))
        rooms = list(response.rooms)
        if args.json:
            print_json([to_dict(r) for r in rooms])
        elif not rooms:
            print("no rooms")
        else:
            print_table(["NAME", "SID", "PARTICIPANTS", "PUBLISHERS", "CREATED"],
                        [[r.name, r.sid, str(r.num_participants), str(r.num_publishers), when(r.creation_time)]
                         for r in rooms])
        return 0

    return run_api(args, call, lambda msg: "no such room")


def _create(args: argparse.Namespace) -> int:
    for flag, value in (("--empty-timeout", args.empty_timeout), ("--departure-timeout", args.departure_timeout),
                        ("--max-participants", args.max_participants)):
        if value is not None and value < 0:
            print(f"meshrtc: {flag} must not be negative", file=sys.stderr)
            return 2

    async def call(client: Any) -> int:
        from livekit import api

        request = api.CreateRoomRequest(name=args.name, empty_timeout=args.empty_timeout or 0,
                                        departure_timeout=args.departure_timeout or 0,
                                        max_participants=args.max_participants or 0, metadata=args.metadata or "")
        room = await client.room.create_room(request)
        if args.json:
            print_json(to_dict(room))
        else:
            print(f"room {room.name} ({room.sid})")
        return 0

    return run_api(args, call, lambda msg: f"room {args.name} does not exist")


def _delete(args: argparse.Namespace) -> int:
    async def call(client: Any) -> int:
        from livekit import api

        await client.room.delete_room(api.DeleteRoomRequest(room=args.name))
        if args.json:
            print_json({"deleted": args.name})
        else:
            print(f"deleted room {args.name}")
        return 0

    return run_api(args, call, lambda msg: f"room {args.name} does not exist")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("room", help="list, create and delete rooms (RoomService API)")
    actions = parser.add_subparsers(dest="room_command", metavar="SUBCOMMAND")

    def show_help(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=show_help)

    listing = actions.add_parser("list", help="list the active rooms")
    listing.add_argument("names", nargs="*", metavar="NAME", help="only these rooms")
    add_connection_options(listing)
    listing.set_defaults(func=_list)

    create = actions.add_parser("create", help="create a room (returns the existing one if it exists)")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--empty-timeout", type=int, metavar="S", help="close after S seconds if nobody joins")
    create.add_argument("--departure-timeout", type=int, metavar="S",
                        help="close S seconds after the last participant left")
    create.add_argument("--max-participants", type=int, metavar="N", help="admit at most N participants")
    create.add_argument("--metadata", metavar="M", help="room metadata")
    add_connection_options(create)
    create.set_defaults(func=_create)

    delete = actions.add_parser("delete", help="delete a room, disconnecting everybody in it")
    delete.add_argument("name", metavar="NAME")
    add_connection_options(delete)
    delete.set_defaults(func=_delete)
