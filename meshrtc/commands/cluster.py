"""`meshrtc cluster status|kill|restart|logs`: operate a Docker Compose deployment
(compose.yaml, compose.multi-dc.yaml) through the Docker engine API.

* `status`: the project's containers (state, health, restarts, node id, IP), then the nodes seen
  on the bus: every service heartbeats on `heartbeat.<dc>.<service>`; the command listens for
  `--listen` seconds (2 s) on the project's NATS servers (found through Docker) or `--nats-url`.
* `kill TARGET`: SIGKILL the service process inside the container, like a crash: the container
  exits and its restart policy brings it back (compose.yaml runs the services under an init).
* `restart TARGET`: stop (SIGTERM, then SIGKILL after `--timeout`) and start again.
* `logs TARGET [--tail N]`.

TARGET is a compose service (every replica of it), a container name (with or without the project
prefix) or a container id prefix.

Needs the Docker SDK, an optional dependency: `pip install 'meshrtc[docker]'`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from shared.errors import ToolError

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
NATS_CLIENT_PORT = 4222


class ClusterError(ToolError, RuntimeError):
    """A one-line reason the command cannot do what was asked."""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("cluster", help="status, kill, restart, logs of a Docker Compose deployment")
    parser.add_argument("--project", "-p", default=os.environ.get("COMPOSE_PROJECT_NAME") or "meshrtc",
                        help="compose project name (default: $COMPOSE_PROJECT_NAME or 'meshrtc')")
    actions = parser.add_subparsers(dest="cluster_action", metavar="ACTION")

    status = actions.add_parser("status", help="containers with health, and node load from heartbeats")
    status.add_argument("--nats-url", help="NATS server(s) to listen on, comma-separated "
                        "(default: the project's NATS containers)")
    status.add_argument("--dc", help="only this datacenter's heartbeats (default: all)")
    status.add_argument("--listen", type=float, default=2.0, metavar="SECONDS",
                        help="how long to collect heartbeats (default: 2)")
    status.set_defaults(func=_guarded(_status))

    kill = actions.add_parser("kill", help="SIGKILL a service's process (a crash: the restart policy applies)")
    kill.add_argument("target", help="service, container name or id")
    kill.set_defaults(func=_guarded(_kill))

    restart = actions.add_parser("restart", help="restart a service's containers")
    restart.add_argument("target", help="service, container name or id")
    restart.add_argument("--timeout", type=int, default=10, help="seconds between SIGTERM and SIGKILL (default: 10)")
    restart.set_defaults(func=_guarded(_restart))

    logs = actions.add_parser("logs", help="print a service's container logs")
    logs.add_argument("target", help="service, container name or id")
    logs.add_argument("--tail", type=int, default=100, metavar="N",
                      help="last N lines of each container (default: 100)")
    logs.set_defaults(func=_guarded(_logs))

    def _help(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=_help)


def _guarded(action: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Errors become one line on stderr and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return action(args)
        except ClusterError as exc:
            print(f"meshrtc cluster: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            if not type(exc).__module__.startswith("docker"):
                raise
            print(f"meshrtc cluster: Docker: {' '.join(str(exc).split())}", file=sys.stderr)
            return 2

    return run


# ---------------------------------------------------------------------------------------------
# Docker


def docker_client() -> Any:
    try:
        import docker
    except ImportError:
        raise ClusterError("the Docker SDK is not installed: pip install 'meshrtc[docker]'") from None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        where = os.environ.get("DOCKER_HOST") or "the local socket"
        reason = " ".join(str(exc).split())
        raise ClusterError(f"cannot reach the Docker engine at {where} (DOCKER_HOST): {reason}") from None
    return client


def _number(container: Any) -> int:
    try:
        return int(container.labels.get(NUMBER_LABEL, "0"))
    except ValueError:
        return 0


def project_containers(client: Any, project: str) -> list[Any]:
    containers = client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"})
    return sorted(containers, key=lambda c: (c.labels.get(SERVICE_LABEL, ""), _number(c), c.name))


def resolve(client: Any, project: str, target: str) -> list[Any]:
    containers = project_containers(client, project)
    if not containers:
        raise ClusterError(f"no containers in compose project {project!r} (see --project)")
    by_service = [c for c in containers if c.labels.get(SERVICE_LABEL) == target]
    if by_service:
        return by_service
    for candidate in (target, f"{project}_{target}", f"{project}-{target}"):
        named = [c for c in containers if c.name == candidate]
        if named:
            return named
    if len(target) >= 4:
        by_id = [c for c in containers if c.id.startswith(target)]
        if len(by_id) == 1:
            return by_id
    services = sorted({c.labels.get(SERVICE_LABEL, "?") for c in containers})
    raise ClusterError(f"no service or container {target!r} in project {project!r}; services: {', '.join(services)}")


def container_env(container: Any) -> dict[str, str]:
    items = container.attrs.get("Config", {}).get("Env") or []
    return dict(item.split("=", 1) for item in items if "=" in item)


def node_id_of(container: Any) -> str:
    """The node id the entrypoint gives the service: MESHRTC_NODE_ID, else the hostname."""
    return container_env(container).get("MESHRTC_NODE_ID") or container.attrs.get("Config", {}).get("Hostname", "")


def ips_of(container: Any) -> list[str]:
    networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
    return [net["IPAddress"] for net in networks.values() if net.get("IPAddress")]


def health_of(container: Any) -> str:
    state = container.attrs.get("State", {})
    health = state.get("Health")
    if health:
        return str(health.get("Status", "?"))
    return "-"


# ---------------------------------------------------------------------------------------------
# Heartbeats


@dataclass
class Beat:
    dc: str
    service: str
    node: str
    participants: int
    tracks: int
    load: float
    draining: bool


BeatKey = tuple[str, str, str]  # dc, service, node


async def collect_heartbeats(urls: Iterable[str], dc: str | None,
                             seconds: float) -> tuple[dict[BeatKey, Beat], list[str]]:
    """Latest heartbeat per (dc, service, node) heard on any of `urls` within `seconds`;
    also the servers that could not be reached."""
    import nats

    from shared.contracts.subjects import heartbeat_filter
    from shared.events import Envelope, EventDecodeError, NodeHeartbeat

    beats: dict[BeatKey, Beat] = {}
    failed: list[str] = []
    subject = heartbeat_filter(dc)

    async def on_message(msg: Any) -> None:
        try:
            env = Envelope.from_json(msg.data)
        except EventDecodeError:
            return
        beat = env.payload
        if isinstance(beat, NodeHeartbeat):
            beats[(beat.dc, beat.service, beat.node_id)] = Beat(beat.dc, beat.service, beat.node_id, beat.participants,
                                                                beat.tracks, beat.load, beat.draining)

    async def quiet(_exc: Exception) -> None:
        pass

    clients = []
    for url in urls:
        try:  # nats-py keeps retrying a refused first connection: bound it
            nc = await asyncio.wait_for(nats.connect(url, connect_timeout=2, allow_reconnect=False, error_cb=quiet), 3)
        except Exception:
            failed.append(url)
            continue
        await nc.subscribe(subject, cb=on_message)
        clients.append(nc)
    try:
        if clients:
            await asyncio.sleep(seconds)
    finally:
        for nc in clients:
            await nc.close()
    return beats, failed


def nats_urls(args: argparse.Namespace, containers: list[Any]) -> list[str]:
    if args.nats_url:
        return [url.strip() for url in args.nats_url.split(",") if url.strip()]
    urls = []
    for container in containers:
        service = container.labels.get(SERVICE_LABEL, "")
        if service.startswith("nats") and container.status == "running":
            ips = ips_of(container)
            if ips:
                urls.append(f"nats://{ips[0]}:{NATS_CLIENT_PORT}")
    if not urls and os.environ.get("MESHRTC_NATS_URL"):
        urls.append(os.environ["MESHRTC_NATS_URL"])
    return urls


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


# ---------------------------------------------------------------------------------------------
# Actions


def _status(args: argparse.Namespace) -> int:
    client = docker_client()
    containers = project_containers(client, args.project)
    if not containers:
        raise ClusterError(f"no containers in compose project {args.project!r} (see --project)")
    rows = [["CONTAINER", "SERVICE", "STATE", "HEALTH", "RESTARTS", "NODE", "IP"]]
    by_node: dict[str, str] = {}
    for c in containers:
        node = node_id_of(c)
        by_node[node] = c.name
        state = c.attrs.get("State", {})
        status = c.status if c.status != "exited" else f"exited({state.get('ExitCode', '?')})"
        restarts = str(c.attrs.get("RestartCount", 0))
        rows.append([c.name, c.labels.get(SERVICE_LABEL, "?"), status, health_of(c), restarts, node,
                     ",".join(ips_of(c)) or "-"])
    print(_table(rows))

    urls = nats_urls(args, containers)
    print()
    if not urls:
        print("nodes: no running NATS container in the project and no --nats-url: heartbeats not read")
        return 0
    from shared.bus import redact_url

    beats, failed = asyncio.run(collect_heartbeats(urls, args.dc, args.listen))
    shown = ", ".join(redact_url(u) for u in urls)
    print(f"nodes: heartbeats on heartbeat.{args.dc or '*'}.* for {args.listen:g} s via {shown}")
    for url in failed:
        print(f"  (could not connect to {redact_url(url)})")
    if not beats:
        print("  no heartbeat heard")
        return 0
    rows = [["DC", "SERVICE", "NODE", "PARTICIPANTS", "TRACKS", "LOAD", "DRAINING", "CONTAINER"]]
    for (dc, service, node), beat in sorted(beats.items()):
        rows.append([dc, service, node, str(beat.participants), str(beat.tracks), f"{beat.load:.2f}",
                     "yes" if beat.draining else "no", by_node.get(node, "-")])
    print(_table(rows))
    return 0


def _kill(args: argparse.Namespace) -> int:
    client = docker_client()
    for c in resolve(client, args.project, args.target):
        c.reload()
        if c.status != "running":
            print(f"{c.name}: not running ({c.status})")
            continue
        if c.attrs.get("HostConfig", {}).get("Init"):
            # PID 1 is the init; SIGKILL every other process of the container's user: the
            # service dies as in a crash, the init exits with 137, the restart policy applies.
            result = c.exec_run(["sh", "-c", "kill -KILL -1"], user=c.attrs.get("Config", {}).get("User") or "")
            if result.exit_code not in (0, None, 137, -1):
                reason = " ".join(result.output.decode(errors="replace").split())
                raise ClusterError(f"{c.name}: kill failed ({result.exit_code}): {reason}")
            policy = c.attrs.get("HostConfig", {}).get("RestartPolicy", {}).get("Name") or "no"
            print(f"{c.name}: service process killed (SIGKILL); restart policy: {policy}")
        else:
            c.kill(signal="SIGKILL")
            print(f"{c.name}: container killed (SIGKILL). It has no init, so Docker counts this as a manual "
                  f"stop and will not restart it: `meshrtc cluster restart {args.target}` starts it again")
    return 0


def _restart(args: argparse.Namespace) -> int:
    client = docker_client()
    for c in resolve(client, args.project, args.target):
        c.restart(timeout=args.timeout)
        print(f"{c.name}: restarted")
    return 0


def _logs(args: argparse.Namespace) -> int:
    client = docker_client()
    containers = resolve(client, args.project, args.target)
    for c in containers:
        text = c.logs(tail=args.tail, stdout=True, stderr=True).decode(errors="replace")
        if len(containers) == 1:
            sys.stdout.write(text)
        else:
            for line in text.splitlines():
                print(f"{c.name} | {line}")
    return 0


