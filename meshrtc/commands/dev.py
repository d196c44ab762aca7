"""`meshrtc dev`: everything on one machine, no set-up.

Starts an embedded nats-server (JetStream in a temporary directory), migrates a SQLite
database, and supervises one process per service (`meshrtc serve <service>`), restarting any
that dies. SIGINT/SIGTERM stop everything, NATS included; children also get SIGTERM from the
kernel if this process is killed outright (PR_SET_PDEATHSIG), so nothing is orphaned.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from meshrtc.dcoptions import DcOptions, parse_datacenters, parse_relay_keys
from shared.config import Settings, settings_to_env
from shared.natsserver import NatsServer, _set_parent_death_signal, free_port

DEV_KEY, DEV_SECRET = "devkey", "secret"


@dataclass
class Child:
    service: str
    node_id: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "meshrtc", "serve", self.service],
            env={**os.environ, **self.env, "MESHRTC_NODE_ID": self.node_id},
            preexec_fn=_set_parent_death_signal,
        )


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("dev", help="run everything locally: embedded NATS, SQLite, all services")
    parser.add_argument("--bind", default="127.0.0.1", help="HTTP/WebSocket address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7880, help="HTTP/WebSocket port (default 7880)")
    parser.add_argument("--nats-port", type=int, default=0, help="embedded NATS port (default: a free one)")
    multi = parser.add_argument_group("multi-datacenter (docs/multi-dc.md; none given: one standalone DC)")
    multi.add_argument("--nats-host", default="127.0.0.1", help="address NATS listens on (default 127.0.0.1)")
    multi.add_argument("--nats-http-port", type=int, help="NATS monitoring port (/varz, /leafz); default: off")
    multi.add_argument("--nats-leaf-port", type=int, help="this DC is the hub: accept leafnodes on this port")
    multi.add_argument("--nats-hub", metavar="URL", help="this DC is a spoke: leafnode to the hub, nats-leaf://host:port")
    multi.add_argument("--datacenters", metavar="DC,DC,…", help="every DC of the deployment, e.g. dc1,dc2,dc3")
    multi.add_argument("--relay-port", type=int, help="the relay's WAN UDP port")
    multi.add_argument("--relay-peer", action="append", default=[], metavar="DC@IP:PORT",
                       help="another DC's relay (repeatable)")
    multi.add_argument("--relay-key", action="append", default=[], metavar="dcA-dcB:HEX",
                       help="a link's 256-bit key in hex (repeatable); prefer --relay-keys-file")
    multi.add_argument("--relay-keys-file", type=Path, help="file of dcA-dcB:HEX lines")
    parser.add_argument("--media-nodes", type=int, default=1, help="media processes to run (default 1)")
    parser.add_argument("--media-capacity", type=int, default=Settings.media_capacity,
                        help="participants per media node before placement counts it full (default 200)")
    parser.add_argument("--webhook", action="append", default=[], help="webhook URL (repeatable)")
    parser.add_argument("--dc", default="dc1")
    parser.add_argument("--data-dir", help="keep NATS and SQLite data here instead of a temporary dir")
    parser.add_argument("--advertise-ip", action="append", default=[],
                        help="IP offered in ICE candidates (default 127.0.0.1)")
    parser.add_argument("--log-level", default=os.environ.get("MESHRTC_LOG_LEVEL", "INFO"))
    parser.set_defaults(func=run)


def dc_options(args: argparse.Namespace) -> DcOptions:
    return DcOptions(
        dc=args.dc, datacenters=parse_datacenters(args.datacenters), nats_host=args.nats_host,
        nats_port=args.nats_port, nats_http_port=args.nats_http_port, nats_leaf_port=args.nats_leaf_port,
        nats_hub=args.nats_hub, relay_port=args.relay_port, relay_peers=tuple(args.relay_peer),
        relay_keys=parse_relay_keys(args.relay_key, args.relay_keys_file),
    ).check()


def run(args: argparse.Namespace) -> int:
    from shared.db import upgrade  # deferred: keeps `meshrtc --help` fast

    options = dc_options(args)  # before anything starts: a bad flag costs nothing

    stop = {"now": False}

    def request_stop(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    own_dir = args.data_dir is None
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="meshrtc-dev-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "nats").mkdir(exist_ok=True)
    if options.multi_dc:
        # The config names its port, so a free one is chosen now rather than by NatsServer.
        options = replace(options, nats_port=options.nats_port or free_port(options.nats_host))
        nats = NatsServer(host=options.nats_host, port=options.nats_port, store_dir=str(data_dir / "nats"),
                          log_file=str(data_dir / "nats.log"),
                          config_text=options.nats_config(data_dir / "nats" / "jetstream"))
    else:
        nats = NatsServer(port=args.nats_port or None, store_dir=str(data_dir / "nats"),
                          log_file=str(data_dir / "nats.log"))
    nats_url = options.client_nats_url() if options.multi_dc else nats.url
    children: list[Child] = []
    try:
        nats.start()
        database_url = f"sqlite:///{data_dir / 'meshrtc.db'}"
        upgrade(database_url)
        settings = Settings(
            nats_url=nats_url, dc=args.dc, datacenters=list(options.datacenters),
            database_url=database_url, api_keys={DEV_KEY: DEV_SECRET},
            http_host=args.bind, http_port=args.port, advertise_ips=args.advertise_ip or ["127.0.0.1"],
            webhook_urls=args.webhook, dev=True, log_level=args.log_level.upper(),
            media_capacity=args.media_capacity,
        )
        env = settings_to_env(settings)
        if options.multi_dc:
            env |= options.service_env()
        children.append(Child("room", f"room-{args.dc}", env))
        children.append(Child("billing", f"billing-{args.dc}", env))
        children.append(Child("relay", f"relay-{args.dc}", env))
        for index in range(max(1, args.media_nodes)):
            children.append(Child("media", f"media-{args.dc}-{index + 1}", env))
        children.append(Child("signal", f"signal-{args.dc}", env))
        metrics: list[str] = []
        for child in children:
            if child.service != "signal":  # signal serves /metrics on its own HTTP port
                port = free_port(args.bind)
                child.env = {**child.env, "MESHRTC_METRICS_PORT": str(port), "MESHRTC_METRICS_HOST": args.bind}
                metrics.append(f"{child.node_id}=http://{args.bind}:{port}/metrics")
            child.start()
        print(
            "meshrtc dev\n"
            f"  URL:        ws://{args.bind}:{args.port}\n"
            f"  API key:    {DEV_KEY}\n"
            f"  API secret: {DEV_SECRET}\n"
            f"  NATS:       {nats_url}\n"
            f"  data:       {data_dir}\n"
            f"  metrics:    http://{args.bind}:{args.port}/metrics {' '.join(metrics)}\n"
            "  Ctrl-C to stop",
            flush=True,
        )
        while not stop["now"]:
            time.sleep(0.2)
            for child in children:
                proc = child.process
                if proc is not None and proc.poll() is not None and not stop["now"]:
                    print(f"meshrtc dev: {child.service} ({child.node_id}) exited with {proc.returncode}; "
                          "restarting", file=sys.stderr, flush=True)
                    child.process = None
                    child.restarts += 1
                    child.next_start = time.monotonic() + min(5.0, 0.5 * child.restarts)
                if child.process is None and time.monotonic() >= child.next_start and not stop["now"]:
                    child.start()
        return 0
    finally:
        _stop_children(children)
        nats.stop(remove_store=False)
        if own_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
        print("meshrtc dev: stopped", flush=True)


def _stop_children(children: list[Child]) -> None:
    for child in children:
        if child.process and child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
