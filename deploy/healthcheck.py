#!/usr/bin/env python3
"""Container healthcheck of the meshrtc image: healthy only while this container's service
really runs.

    meshrtc-healthcheck [SERVICE]

* Every service (signal, media, relay, room, billing) publishes a heartbeat on
  `heartbeat.<dc>.<service>` every MESHRTC_HEARTBEAT_MS (shared/service.py). The check connects
  to MESHRTC_NATS_URL and waits up to 3 s (or three heartbeat periods) for a beat whose `node`
  is this container's node id (the entrypoint sets MESHRTC_NODE_ID to the hostname).
* signal must also answer `GET /healthz` with 200 on MESHRTC_HTTP_PORT.
* Any other command (`db upgrade`, ...) is a one-shot: always healthy.

Without SERVICE, the service is read from the command line of the container's `meshrtc serve`
process (/proc/*/cmdline), so the image's HEALTHCHECK needs no argument. Settings come from the
environment `docker exec` gives the check (the container's), the node id defaulting to the
hostname as in the entrypoint. Prints one line; exits 0 when healthy, 1 when not.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import urllib.request
from pathlib import Path

SERVICES = ("signal", "media", "relay", "room", "billing")


def _read(path: Path) -> list[str]:
    try:
        return [part.decode(errors="replace") for part in path.read_bytes().split(b"\0") if part]
    except OSError:
        return []


def find_service() -> str | None:
    """The service of the `meshrtc serve <service>` process in this container, if any."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        args = _read(proc / "cmdline")
        if "serve" in args:
            index = args.index("serve")
            if index + 1 < len(args) and args[index + 1] in SERVICES:
                return args[index + 1]
    return None


async def saw_heartbeat(nats_url: str, dc: str, service: str, node_id: str, wait: float) -> str | None:
    """None when a heartbeat of `node_id` arrived within `wait` seconds, else the reason."""
    import nats

    beat = asyncio.Event()

    async def on_message(msg: object) -> None:
        try:
            data = json.loads(msg.data)  # type: ignore[attr-defined]
        except ValueError:
            return
        if isinstance(data, dict) and data.get("node") == node_id:
            beat.set()

    async def quiet(_exc: Exception) -> None:
        pass

    try:  # nats-py keeps retrying a refused first connection: bound it
        nc = await asyncio.wait_for(nats.connect(nats_url, connect_timeout=2, allow_reconnect=False, error_cb=quiet), 3)
    except Exception as exc:
        return f"NATS {nats_url.split('@')[-1]} unreachable: {type(exc).__name__}"
    try:
        await nc.subscribe(f"heartbeat.{dc}.{service}", cb=on_message)
        await nc.flush(timeout=2)
        await asyncio.wait_for(beat.wait(), wait)
        return None
    except TimeoutError:
        return f"no heartbeat from {service} node {node_id} on heartbeat.{dc}.{service} within {wait:g} s"
    finally:
        await nc.close()


def signal_healthz(port: str) -> str | None:
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            if response.status == 200:
                return None
            return f"{url} answered {response.status}"
    except Exception as exc:
        return f"{url}: {exc}"


def main(argv: list[str]) -> int:
    service = argv[1] if len(argv) > 1 else find_service()
    if service is None:
        print("healthy: no service in this container (one-shot command)")
        return 0
    env = os.environ  # `docker exec` gets the container's configured environment
    node_id = env.get("MESHRTC_NODE_ID") or socket.gethostname()
    dc = env.get("MESHRTC_DC") or "dc1"
    nats_url = env.get("MESHRTC_NATS_URL") or "nats://127.0.0.1:4222"
    try:
        period = int(env.get("MESHRTC_HEARTBEAT_MS") or 1000) / 1000
    except ValueError:
        period = 1.0
    if service == "signal":
        problem = signal_healthz(env.get("MESHRTC_HTTP_PORT") or "7880")
        if problem:
            print(f"unhealthy: {problem}")
            return 1
    problem = asyncio.run(saw_heartbeat(nats_url, dc, service, node_id, max(3.0, 3 * period)))
    if problem:
        print(f"unhealthy: {problem}")
        return 1
    print(f"healthy: {service} node {node_id} in {dc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
