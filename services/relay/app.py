"""Relay service wiring: sockets, the relay's control side, NATS subjects, usage and metrics.

Configuration (docs/configuration.md): MESHRTC_RELAY_PORT (WAN UDP), MESHRTC_RELAY_LOCAL_PORT
(UDP for this DC's media nodes), MESHRTC_RELAY_PEERS, MESHRTC_RELAY_KEYS, MESHRTC_INTERNAL_IP.
How the relay works: docs/relay.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from services.relay.relay import Relay
from shared.bus import BusUnavailable
from shared.config import ConfigError, Settings, relay_link_name
from shared.contracts.relay import (
    RELAY_QUEUE,
    RelayStatsRequest,
    RelaySubscribe,
    parse_hostport,
    relay_stats_subject,
    relay_subscribe_subject,
)
from shared.contracts.subjects import usage_subject
from shared.events import EventPayload
from shared.service import Service

log = logging.getLogger("meshrtc.relay")

SOCKET_BUFFER = 4 * 1024 * 1024
USAGE_INTERVAL_S = 5.0
MAX_DCS = 16


def open_udp(host: str, port: int, variable: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(variable, f"cannot bind UDP {host}:{port}: {exc}") from None
    return sock


def resolve_peers(settings: Settings) -> dict[str, tuple[str, int]]:
    peers: dict[str, tuple[str, int]] = {}
    for dc, address in settings.relay_peers.items():
        host, port = parse_hostport(address)
        try:
            peers[dc] = (socket.gethostbyname(host), port)
        except OSError as exc:
            raise ConfigError("MESHRTC_RELAY_PEERS", f"cannot resolve {host} ({dc}): {exc}") from None
    return peers


def link_keys(settings: Settings) -> dict[str, bytes]:
    """Each peer DC -> the key of the link to it; a missing key is a configuration error."""
    keys: dict[str, bytes] = {}
    for dc in settings.relay_peers:
        name = relay_link_name(settings.dc, dc)
        if name not in settings.relay_keys:
            raise ConfigError("MESHRTC_RELAY_KEYS", f"no key for link {name}")
        keys[dc] = bytes.fromhex(settings.relay_keys[name])
    return keys


class RelayService(Service):
    name = "relay"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.relay: Relay | None = None
        self.events_dropped = 0
        self._usage_task: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        settings = self.settings
        dcs = sorted({settings.dc, *settings.relay_peers})
        if len(dcs) > MAX_DCS:
            raise ConfigError("MESHRTC_RELAY_PEERS", f"{len(dcs)} datacenters; at most {MAX_DCS} are supported")
        keys, peers = link_keys(settings), resolve_peers(settings)
        wan = open_udp(settings.bind_ip, settings.relay_port, "MESHRTC_RELAY_PORT")
        local = open_udp(settings.bind_ip, settings.relay_local_port, "MESHRTC_RELAY_LOCAL_PORT")
        relay_local = f"{settings.internal_ip}:{local.getsockname()[1]}"
        assert self.bus is not None
        bus = self.bus
        self.relay = Relay(settings.dc, dcs, {dc: keys[dc] for dc in peers}, peers, wan, local, relay_local,
                           bus.request, self._emit)
        self.relay.start()
        await bus.serve(relay_subscribe_subject(settings.dc), self._on_subscribe, queue=RELAY_QUEUE, concurrency=8)
        await bus.serve(relay_stats_subject(settings.dc), self._on_stats)
        self._usage_task = asyncio.create_task(self._usage_loop(), name="relay-usage")
        described = ", ".join(f"{dc}@{a[0]}:{a[1]}" for dc, a in peers.items()) or "none"
        log.info("relay %s: WAN udp %s:%d, local %s, peers %s", settings.dc, settings.bind_ip,
                 wan.getsockname()[1], relay_local, described)

    async def on_stop(self) -> None:
        if self._usage_task:
            self._usage_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._usage_task
        if self.relay:
            await self.relay.stop()
            self.relay.forwarder.wan_sock.close()
            self.relay.forwarder.local_sock.close()

    def _emit(self, payload: EventPayload, room: str | None = None, subject: str | None = None) -> None:
        """Queue an event; never waits on the bus (a full outbox drops and counts it)."""
        if self.bus is None:
            return
        try:
            self.bus.publish_event_nowait(self.envelope(payload, room=room), subject=subject)
        except BusUnavailable as exc:
            self.events_dropped += 1
            log.warning("event %s dropped: %s", payload.TYPE, exc)

    async def _on_subscribe(self, data: bytes) -> bytes:
        assert self.relay is not None
        return self.relay.subscribe(RelaySubscribe.decode(data)).encode()

    async def _on_stats(self, data: bytes) -> bytes:
        assert self.relay is not None
        request = RelayStatsRequest.decode(data) if data else RelayStatsRequest()
        lag = self.metrics.lag
        stats = self.relay.stats(lag.last * 1000, lag.worst * 1000).model_copy(update={"node_id": self.node_id})
        if request.reset_worst_lag:
            lag.worst = 0.0
        return stats.encode()

    async def _usage_loop(self) -> None:
        start_ms = int(time.time() * 1000)
        while True:
            await asyncio.sleep(USAGE_INTERVAL_S)
            end_ms = int(time.time() * 1000)
            assert self.relay is not None
            for sample in self.relay.usage.sample(list(self.relay.forwarder.streams.values()), start_ms, end_ms):
                self._emit(sample, room=sample.room, subject=usage_subject(self.settings.dc, sample.room))
            start_ms = end_ms

    def metrics_snapshot(self) -> dict[str, float]:
        if self.relay is None:
            return {}
        forwarder = self.relay.forwarder
        values: dict[str, float] = {
            "relay_streams": len(forwarder.streams),
            "relay_local_subscribers": self.relay.subscriptions.local_count,
            "relay_links_up": self.relay.links_up(),
            "relay_dropped_total": sum(forwarder.drops.values()),
            "relay_events_dropped_total": self.events_dropped,
        }
        for link in forwarder.peers.values():
            for name, value in link.counters().items():
                key = f"relay_wan_{name}_total"
                values[key] = values.get(key, 0) + value
        return values


async def main(settings: Settings) -> None:
    await RelayService(settings).run()
