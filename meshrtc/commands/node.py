"""`meshrtc node drain <node>`: move a media node's participants elsewhere, one at a time, then
let the node stop (a rolling restart drains each node in turn)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from shared.config import load_settings
from shared.contracts.control import NodeStats
from shared.contracts.subjects import media_node_subject


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("node", help="operate media nodes")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    drain = actions.add_parser("drain", help="move participants off a media node, then stop it")
    drain.add_argument("node", help="media node id (see `meshrtc cluster status` or the dev log)")
    drain.add_argument("--nats-url", help="this DC's NATS (default MESHRTC_NATS_URL)")
    drain.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the node to empty")
    drain.set_defaults(func=run_drain)
    stats = actions.add_parser("stats", help="what a media node holds now")
    stats.add_argument("node")
    stats.add_argument("--nats-url")
    stats.set_defaults(func=run_stats)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


async def _request(url: str, subject: str, timeout: float = 5.0) -> bytes:
    import nats

    nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0)
    try:
        return (await nc.request(subject, b"", timeout=timeout)).data
    finally:
        await nc.close()


def run_drain(args: argparse.Namespace) -> int:
    url = args.nats_url or load_settings().nats_url

    async def drain() -> int:
        try:
            await _request(url, media_node_subject(args.node, "drain"))
        except Exception as exc:
            print(f"meshrtc: node {args.node} did not answer on {url}: {exc}", file=sys.stderr)
            return 1
        print(f"draining {args.node}", flush=True)
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            try:
                stats = NodeStats.decode(await _request(url, media_node_subject(args.node, "stats"), 2))
            except Exception:
                print(f"{args.node} drained and stopped")
                return 0
            print(f"  {stats.sessions} participant(s) left", flush=True)
        print(f"meshrtc: {args.node} still has participants after {args.wait:.0f}s", file=sys.stderr)
        return 1

    return asyncio.run(drain())


def run_stats(args: argparse.Namespace) -> int:
    url = args.nats_url or load_settings().nats_url
    try:
        raw = asyncio.run(_request(url, media_node_subject(args.node, "stats")))
    except Exception as exc:
        print(f"meshrtc: node {args.node} did not answer on {url}: {exc}", file=sys.stderr)
        return 1
    print(NodeStats.decode(raw).model_dump_json(indent=2))
    return 0
