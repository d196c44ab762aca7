"""`meshrtc serve <service>`: run one service, configured from the environment and flags."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

from shared.bus import BusUnavailable
from shared.config import ConfigError, load_settings
from shared.db import DatabaseUnavailable
from shared.logs import setup_logging

SERVICES = ["signal", "media", "relay", "room", "billing"]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="run one service (configured by MESHRTC_* variables)")
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--nats-url", help="overrides MESHRTC_NATS_URL")
    parser.add_argument("--dc", help="overrides MESHRTC_DC")
    parser.add_argument("--node-id", help="overrides MESHRTC_NODE_ID")
    parser.add_argument("--database-url", help="overrides MESHRTC_DATABASE_URL")
    parser.add_argument("--http-host", help="overrides MESHRTC_HTTP_HOST (signal)")
    parser.add_argument("--http-port", type=int, help="overrides MESHRTC_HTTP_PORT (signal)")
    parser.add_argument("--advertise-ip", action="append", dest="advertise_ips",
                        help="overrides MESHRTC_ADVERTISE_IPS (media; repeatable)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings().with_overrides(
        nats_url=args.nats_url, dc=args.dc, node_id=args.node_id, database_url=args.database_url,
        http_host=args.http_host, http_port=args.http_port, advertise_ips=args.advertise_ips,
    )
    setup_logging(settings.log_level, args.service, settings.node_id)
    module = importlib.import_module(f"services.{args.service}.app")
    try:
        asyncio.run(module.main(settings))
    except (ConfigError, BusUnavailable, DatabaseUnavailable) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the cause's formatting
        print(f"meshrtc {args.service}: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
