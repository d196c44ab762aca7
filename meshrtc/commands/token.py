"""`meshrtc token create`: mint an access token, like `lk token create`."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import timedelta

import jwt

from shared.auth import DEFAULT_TTL, TRACK_SOURCES, Claims, VideoGrant, mint_token
from shared.config import load_settings
from shared.errors import ToolError

DEV_KEY, DEV_SECRET = "devkey", "secret"  # what `meshrtc dev` and `livekit-server --dev` accept

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


class UsageError(ToolError):
    """A bad flag value; reported as one line on stderr with exit code 2."""


def parse_duration(text: str) -> timedelta:
    """`90m`, `24h`, `3600s`, `1h30m`, `2d`, or bare seconds."""
    spec = text.strip().lower()
    if re.fullmatch(r"\d+", spec):
        seconds = float(spec)
    elif re.fullmatch(r"(\d+(\.\d+)?[dhms])+", spec):
        seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([dhms])", spec))
    else:
        raise UsageError(f"invalid --valid-for {text!r}: expected e.g. 90m, 24h, 3600s or 1h30m")
    if seconds <= 0:
        raise UsageError(f"invalid --valid-for {text!r}: must be longer than zero")
    return timedelta(seconds=seconds)


def _credentials(args: argparse.Namespace) -> tuple[str, str]:
    if args.api_key and args.api_secret:
        return args.api_key, args.api_secret
    if args.api_secret:
        raise UsageError("--api-secret needs --api-key")
    keys = load_settings().api_keys
    if args.api_key:
        if args.api_key not in keys:
            raise UsageError(f"no secret known for API key {args.api_key!r}: pass --api-secret")
        return args.api_key, keys[args.api_key]
    # MESHRTC_API_KEY names the key this machine acts as; otherwise the first configured one.
    preferred = os.environ.get("MESHRTC_API_KEY", "")
    if preferred in keys:
        return preferred, keys[preferred]
    if keys:
        return next(iter(keys.items()))
    return DEV_KEY, DEV_SECRET


def _video_grant(args: argparse.Namespace) -> VideoGrant:
    if args.allow_publish and args.deny_publish:
        raise UsageError("--allow-publish and --deny-publish contradict each other")
    sources: list[str] | None = None
    if args.publish_sources is not None:
        sources = [s.strip().lower() for s in args.publish_sources.split(",") if s.strip()]
        unknown = [s for s in sources if s not in TRACK_SOURCES]
        if unknown:
            raise UsageError(f"unknown --publish-sources {', '.join(unknown)}: "
                             f"choose from {', '.join(TRACK_SOURCES)}")
        if args.deny_publish:
            raise UsageError("--publish-sources and --deny-publish contradict each other")
    join = args.join or not (args.admin or args.create or args.list)
    if join and not (args.room and args.identity):
        raise UsageError("a join token needs --room and --identity")
    if args.admin and not args.room:
        raise UsageError("--admin needs --room (admin rights are per room)")
    grant = VideoGrant(
        room_join=True if join else None,
        room_admin=True if args.admin else None,
        room_create=True if args.create else None,
        room_list=True if args.list else None,
        room=args.room or "",
        can_publish_sources=sources,
        can_update_own_metadata=True if args.can_update_metadata else None,
        hidden=True if args.hidden else None,
    )
    if join:
        # All three are written explicitly: livekit-api reads an absent canPublishData as True
        # while the Go server reads it as canPublish, so leaving it out would be ambiguous.
        grant.can_publish = not args.deny_publish
        grant.can_subscribe = not args.deny_subscribe
        grant.can_publish_data = grant.can_publish and not args.deny_publish_data
    return grant


def _attributes(pairs: list[str]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid --attribute {pair!r}: expected KEY=VALUE")
        attributes[key] = value
    return attributes


def _create(args: argparse.Namespace) -> int:
    try:
        ttl = parse_duration(args.valid_for) if args.valid_for else DEFAULT_TTL
        claims = Claims(
            identity=args.identity or "",
            name=args.name or "",
            kind=args.kind or "",
            metadata=args.metadata or "",
            attributes=_attributes(args.attribute),
            video=_video_grant(args),
        )
        api_key, api_secret = _credentials(args)
    except UsageError as exc:
        print(f"meshrtc token create: {exc}", file=sys.stderr)
        return 2
    token = mint_token(api_key, api_secret, claims, ttl=ttl)
    if args.json:
        # Read exp back from the token so the reported expiry is exactly what was signed.
        expires = jwt.decode(token, options={"verify_signature": False})["exp"]
        print(json.dumps({"token": token, "identity": claims.identity, "room": claims.video.room,
                          "expires": expires}))
    else:
        print(token)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("token", help="create access tokens")
    token_sub = parser.add_subparsers(dest="token_command", metavar="SUBCOMMAND")

    def show_help(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=show_help)

    create = token_sub.add_parser(
        "create",
        help="mint an access token",
        description="Mint a LiveKit-compatible access token. Without a grant flag the token "
        "lets --identity join --room. Credentials default to MESHRTC_API_KEY/MESHRTC_API_SECRET, "
        "then the first MESHRTC_API_KEYS entry, then devkey/secret.",
    )
    create.add_argument("--room", help="room name (video.room)")
    create.add_argument("--identity", help="participant identity (sub)")
    create.add_argument("--name", help="participant display name")
    create.add_argument("--metadata", help="participant metadata")
    create.add_argument("--attribute", action="append", default=[], metavar="KEY=VALUE",
                        help="participant attribute (repeatable)")
    create.add_argument("--kind", choices=["standard", "ingress", "egress", "sip", "agent"],
                        help="participant kind")

    grants = create.add_argument_group("grants")
    grants.add_argument("--join", action="store_true", help="may join --room (default)")
    grants.add_argument("--admin", action="store_true", help="may administer --room")
    grants.add_argument("--create", action="store_true", help="may create and delete rooms")
    grants.add_argument("--list", action="store_true", help="may list rooms")
    grants.add_argument("--allow-publish", action="store_true", help="may publish tracks (default)")
    grants.add_argument("--deny-publish", action="store_true", help="may not publish tracks or data")
    grants.add_argument("--deny-subscribe", action="store_true", help="may not subscribe")
    grants.add_argument("--deny-publish-data", action="store_true", help="may not send data packets")
    grants.add_argument("--can-update-metadata", action="store_true",
                        help="may update its own name, metadata and attributes")
    grants.add_argument("--hidden", action="store_true", help="invisible to other participants")
    grants.add_argument("--publish-sources", metavar="SOURCES",
                        help=f"comma-separated subset of {','.join(TRACK_SOURCES)}")

    create.add_argument("--valid-for", metavar="DURATION", help="lifetime, e.g. 90m, 24h (default 6h)")
    create.add_argument("--api-key", help="API key (iss)")
    create.add_argument("--api-secret", help="API secret")
    create.add_argument("--json", action="store_true", help="print a JSON object instead of the bare token")
    create.set_defaults(func=_create)
