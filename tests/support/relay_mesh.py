"""Three real relay processes for integration tests, and stand-in media nodes.

`RelayMesh` starts, per DC, its own nats-server and `meshrtc serve relay` configured only by
environment (ports, peers, per-link keys), with the dc1-dc2 link behind a `UdpLinkProxy` that
can blackhole it. Stand-in media nodes are real peers: plain UDP sockets speaking the local
relay wire and a NATS responder answering the relay's export requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable
from pathlib import Path

from nats.aio.subscription import Subscription

from shared.bus import Bus
from shared.contracts import relay as control
from shared.natsserver import NatsServer, free_port
from shared.relay_wire import NOT_SIMULCAST, LocalType, encode_local, parse_local, stream_id
from tests.support.udp_proxy import UdpLinkProxy

ROOT = Path(__file__).resolve().parents[2]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def end_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (if still running), then SIGKILL after 10 s."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class RelayMesh:
    def __init__(self, workdir: Path, dcs: tuple[str, ...] = ("dc1", "dc2", "dc3"),
                 proxied: tuple[str, str] = ("dc1", "dc2")) -> None:
        self.workdir = workdir
        self.dcs = dcs
        self.proxied = proxied
        self.wan_ports = {dc: free_udp_port() for dc in dcs}
        self.metrics_ports = {dc: free_port() for dc in dcs}
        self.keys = {f"{a}-{b}": secrets.token_hex(32) for a in dcs for b in dcs if a < b}
        self.nats: dict[str, NatsServer] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.proxy = UdpLinkProxy(("127.0.0.1", self.wan_ports[proxied[0]]), ("127.0.0.1", self.wan_ports[proxied[1]]))

    def peer_address(self, dc: str, other: str) -> str:
        if (dc, other) == self.proxied:
            return self.proxy.side_a
        if (other, dc) == self.proxied:
            return self.proxy.side_b
        return f"127.0.0.1:{self.wan_ports[other]}"

    def env(self, dc: str) -> dict[str, str]:
        return {
            **os.environ,
            "MESHRTC_DC": dc,
            "MESHRTC_NATS_URL": self.nats[dc].url,
            "MESHRTC_NODE_ID": f"relay-{dc}",
            "MESHRTC_BIND_IP": "127.0.0.1",
            "MESHRTC_INTERNAL_IP": "127.0.0.1",
            "MESHRTC_RELAY_PORT": str(self.wan_ports[dc]),
            "MESHRTC_RELAY_LOCAL_PORT": "0",
            "MESHRTC_RELAY_PEERS": ",".join(f"{o}@{self.peer_address(dc, o)}" for o in self.dcs if o != dc),
            "MESHRTC_RELAY_KEYS": ",".join(f"{link}:{key}" for link, key in self.keys.items()),
            "MESHRTC_LOG_LEVEL": "INFO",
            "MESHRTC_METRICS_PORT": str(self.metrics_ports[dc]),
        }

    def start(self) -> RelayMesh:
        self.proxy.start()
        for dc in self.dcs:
            (self.workdir / dc).mkdir(parents=True, exist_ok=True)
            self.nats[dc] = NatsServer(store_dir=str(self.workdir / dc)).start()
        for dc in self.dcs:
            log = open(self.workdir / f"relay-{dc}.log", "ab")
            self.processes[dc] = subprocess.Popen([sys.executable, "-m", "meshrtc", "serve", "relay"], env=self.env(dc),
                                                  stdout=log, stderr=log, cwd=ROOT)
        return self

    def cpu_seconds(self, dc: str) -> float:
        """User + system CPU time the relay process of `dc` has used so far."""
        fields = Path(f"/proc/{self.processes[dc].pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def udp_socket_drops() -> dict[int, int]:
        """Kernel drops (receive buffer full) per local UDP port on this host, from /proc/net/udp."""
        drops: dict[int, int] = {}
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            drops[port] = drops.get(port, 0) + int(fields[-1])
        return drops

    def log(self, dc: str) -> str:
        return (self.workdir / f"relay-{dc}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in self.processes.values():  # all get SIGTERM first, then each is awaited
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            end_process(process)
        for server in self.nats.values():
            server.stop()
        self.proxy.stop()


class MeshClients:
    """One bus connection per DC (what a media node of that DC would have)."""

    def __init__(self, mesh: RelayMesh) -> None:
        self.mesh = mesh
        self.buses: dict[str, Bus] = {}

    async def __aenter__(self) -> MeshClients:
        for dc in self.mesh.dcs:
            self.buses[dc] = await Bus.connect(self.mesh.nats[dc].url, name=f"test-{dc}", dc=dc, node=f"test-{dc}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for bus in self.buses.values():
            await bus.close()

    async def stats(self, dc: str, reset_worst_lag: bool = False) -> control.RelayStats:
        raw = await self.buses[dc].request(control.relay_stats_subject(dc), control.RelayStatsRequest(
            reset_worst_lag=reset_worst_lag).encode(), timeout=3)
        return control.RelayStats.decode(raw)

    async def wait_mesh_up(self, timeout: float = 90) -> None:
        """Until every relay answers and sees all its links up with a route to every DC (process start
        alone can take 10+ s on a loaded machine: the CLI imports every command)."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                ready = True
                for dc in self.mesh.dcs:
                    stats = await self.stats(dc)
                    own = [link for link in stats.links if link.src_dc == dc]
                    ready &= len(own) == len(self.mesh.dcs) - 1 and all(link.status == "up" for link in own)
                    ready &= len(stats.paths) == len(self.mesh.dcs) - 1
                    last = stats
                if ready:
                    return
            except Exception as exc:
                last = exc
            await asyncio.sleep(0.2)
        raise AssertionError(f"relay mesh not up within {timeout}s: {last}")


class _UdpStandIn:
    """A stand-in media node's UDP socket (read by the event loop) and its background task."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._task: asyncio.Task[None] | None = None

    def _on_datagram(self) -> None:
        raise NotImplementedError

    def _run(self, work: Awaitable[None]) -> None:
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._on_datagram)
        self._task = asyncio.ensure_future(work)

    async def stop(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sock.close()


class StandInPublisher(_UdpStandIn):
    """A publisher's media node: answers export requests and sends each exported track's RTP."""

    def __init__(self, bus: Bus, node: str, payload_size: int = 100) -> None:
        super().__init__()
        self.bus = bus
        self.node = node
        self.payload_size = payload_size
        self.exports: dict[str, tuple[tuple[str, int], float]] = {}
        self.export_requests = 0
        self.keyframes: list[tuple[int, int]] = []
        self.sent = 0
        self._serving: Subscription | None = None

    async def start(self, pps: float = 50) -> StandInPublisher:
        self._serving = await self.bus.serve(control.media_export_subject(self.node), self._on_export)
        self._run(self._send_loop(1 / pps))
        return self

    async def stop(self) -> None:
        if self._serving is not None:
            await self._serving.unsubscribe()
        await super().stop()

    async def _on_export(self, data: bytes) -> bytes:
        request = control.TrackExport.decode(data)
        self.export_requests += 1
        if request.ttl_s > 0:
            expires = time.monotonic() + request.ttl_s
            self.exports[request.track_sid] = (control.parse_hostport(request.deliver_to), expires)
        else:
            self.exports.pop(request.track_sid, None)
        return control.TrackExported(source=self.address).encode()

    def _on_datagram(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                kind, stream, layer, _ = parse_local(self.sock.recv(2048))
                if kind == LocalType.KEYFRAME:
                    self.keyframes.append((stream, layer))

    async def _send_loop(self, period: float) -> None:
        seq = 0
        next_at = time.monotonic()
        while True:
            now = time.monotonic()
            for track, (address, expires) in list(self.exports.items()):
                if expires > now:
                    payload = seq.to_bytes(8, "big").ljust(self.payload_size, b"\x00")
                    with contextlib.suppress(BlockingIOError):
                        self.sock.sendto(encode_local(LocalType.RTP, stream_id(track), NOT_SIMULCAST, payload),
                                         address)
                        self.sent += 1
            seq += 1
            next_at = max(next_at + period, time.monotonic())  # late: skip the round, never burst to catch up
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


class PublisherProcess:
    """A `StandInPublisher` in a process of its own (a media node is one): under load the test
    process, busy receiving, would otherwise starve the sender. `sent()` asks it over NATS."""

    def __init__(self, nats_url: str, node: str, payload_size: int = 100, pps: float = 50) -> None:
        self.node = node
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.relay_mesh", nats_url, node, str(payload_size), str(pps)], cwd=ROOT)

    async def sent(self, bus: Bus) -> int:
        return int(await bus.request(_sent_subject(self.node), b"", timeout=5))

    def stop(self) -> None:
        end_process(self.process)


def _sent_subject(node: str) -> str:
    return f"test.publisher.{node}.sent"


async def _publisher_process(nats_url: str, node: str, payload_size: int, pps: float) -> None:
    bus = await Bus.connect(nats_url, name=f"stand-in-{node}", dc="dc1", node=node)
    publisher = await StandInPublisher(bus, node, payload_size).start(pps)

    async def sent(_: bytes) -> bytes:
        return str(publisher.sent).encode()

    await bus.serve(_sent_subject(node), sent)
    try:
        await asyncio.Event().wait()
    finally:
        await publisher.stop()
        await bus.close()


class StandInSubscriber(_UdpStandIn):
    """A subscriber's media node: asks its relay for tracks every second, records arrivals."""

    def __init__(self, bus: Bus, dc: str, node: str) -> None:
        super().__init__()
        self.bus = bus
        self.dc = dc
        self.node = node
        self.arrivals: dict[int, list[float]] = defaultdict(list)
        self.relay_local: tuple[str, int] | None = None

    def start(self, tracks: list[str], origin_dc: str, origin_node: str, room: str = "room-a") -> StandInSubscriber:
        self._run(self._subscribe_loop(tracks, origin_dc, origin_node, room))
        return self

    async def subscribe(self, track: str, origin_dc: str, origin_node: str, room: str, ttl_s: float = 5) -> None:
        request = control.RelaySubscribe(room=room, project="proj", track_sid=track, origin_dc=origin_dc,
                                 origin_node=origin_node, subscriber_node=self.node, deliver_to=self.address,
                                 ttl_s=ttl_s)
        raw = await self.bus.request(control.relay_subscribe_subject(self.dc), request.encode(), timeout=3)
        reply = control.RelaySubscribed.decode(raw)
        self.relay_local = control.parse_hostport(reply.relay_local)

    async def _subscribe_loop(self, tracks: list[str], origin_dc: str, origin_node: str, room: str) -> None:
        while True:
            for chunk in range(0, len(tracks), 50):
                await asyncio.gather(*(self.subscribe(t, origin_dc, origin_node, room)
                                       for t in tracks[chunk:chunk + 50]), return_exceptions=True)
            await asyncio.sleep(1.0)

    def _on_datagram(self) -> None:
        now = time.monotonic()
        with contextlib.suppress(BlockingIOError):
            while True:
                kind, stream, _, _ = parse_local(self.sock.recv(2048))
                if kind == LocalType.RTP:
                    self.arrivals[stream].append(now)

    def request_keyframe(self, track: str, layer: int) -> None:
        assert self.relay_local is not None
        self.sock.sendto(encode_local(LocalType.KEYFRAME, stream_id(track), layer), self.relay_local)

    def longest_gap(self, track: str, start: float, end: float) -> float:
        """Longest silence in [start, end] for a track (edges count: no packet at all = end - start)."""
        times = [start] + [t for t in self.arrivals.get(stream_id(track), []) if start <= t <= end] + [end]
        return max(b - a for a, b in itertools.pairwise(times))

    def count(self, track: str, since: float = 0.0) -> int:
        return sum(1 for t in self.arrivals.get(stream_id(track), []) if t >= since)


if __name__ == "__main__":  # PublisherProcess: nats_url node payload_size pps
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        asyncio.run(_publisher_process(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
