"""What every meshrtc service process has in common: a bus connection, node.up/node.down
events, a heartbeat, and an orderly stop on SIGTERM/SIGINT.

A service subclasses `Service`, implements `on_start`/`on_stop` and may override
`heartbeat_load`. Wiring (which adapters, which handlers) stays in each service's `app.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from shared.bus import Bus
from shared.config import Settings
from shared.contracts.subjects import heartbeat_subject
from shared.events import Envelope, NodeDown, NodeHeartbeat, NodeUp
from shared.heartbeat import HeartbeatThread
from shared.metrics import ServiceMetrics

log = logging.getLogger(__name__)

VERSION = "1.9.0"  # the LiveKit server version we present; clients require semver >= 1.8


class Service:
    name = "service"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.bus: Bus | None = None
        self.stopping = asyncio.Event()
        self.draining = False
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.started_at = time.time()
        self.metrics = ServiceMetrics(self.name, self.node_id, lambda: self.metrics_snapshot())
        self._metrics_server: asyncio.AbstractServer | None = None

    # ---- hooks -------------------------------------------------------------------------
    async def on_start(self) -> None: ...

    async def on_stop(self) -> None: ...

    def metrics_snapshot(self) -> dict[str, float]:
        """Service-specific values for /metrics (read on scrape, never on the packet path)."""
        return {}

    def heartbeat_load(self) -> NodeHeartbeat:
        return NodeHeartbeat(node_id=self.node_id, service=self.name, dc=self.settings.dc,
                             interval_ms=self.settings.heartbeat_ms, draining=self.draining)

    # ---- lifecycle ---------------------------------------------------------------------
    def envelope(self, payload: object, room: str | None = None) -> Envelope:
        return Envelope.new(payload, dc=self.settings.dc, node=self.node_id, room=room)  # type: ignore[arg-type]

    async def start(self) -> None:
        self.bus = await Bus.connect(
            self.settings.nats_url, name=f"{self.name}-{self.node_id}", dc=self.settings.dc, node=self.node_id,
            connect_timeout=self.settings.nats_connect_timeout,
        )
        await self.bus.ensure_streams(datacenters=self.settings.mesh_dcs)
        await self.on_start()
        await self.bus.publish_event(self.envelope(
            NodeUp(node_id=self.node_id, service=self.name, dc=self.settings.dc, version=VERSION)))
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name=f"{self.name}-heartbeat")
        self._lag_task = asyncio.create_task(self.metrics.lag.run(), name=f"{self.name}-loop-lag")
        if self.settings.metrics_port:
            self._metrics_server = await asyncio.start_server(
                self._serve_metrics, self.settings.metrics_host, self.settings.metrics_port)
        log.info("%s %s started (dc=%s, nats=%s)", self.name, self.node_id, self.settings.dc, self.settings.nats_url)

    async def _serve_metrics(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A minimal HTTP/1.0 endpoint: every GET gets the metrics (Prometheus scrapes /metrics)."""
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if request.startswith(b"GET /metrics"):
                body = self.metrics.render()
                head = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            else:
                body, head = b"not found\n", b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
            writer.write(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _heartbeat_loop(self) -> None:
        """Refreshes the load the heartbeat thread reports (the thread beats, this loop measures)."""
        interval = self.settings.heartbeat_ms / 1000
        self._beat_payload = self.heartbeat_load()
        self._beater = HeartbeatThread(
            self.settings.nats_url, heartbeat_subject(self.settings.dc, self.name),
            lambda: self.envelope(self._beat_payload).to_json(), interval, self.node_id)
        self._beater.start()
        try:
            while True:
                await asyncio.sleep(interval)
                self._beat_payload = self.heartbeat_load()
        finally:
            await asyncio.to_thread(self._beater.stop)

    async def stop(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.close()
        if getattr(self, "_lag_task", None):
            self._lag_task.cancel()
        if self._heartbeat_task:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        try:
            await self.on_stop()
        finally:
            if self.bus:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.bus.publish_event(self.envelope(
                        NodeDown(node_id=self.node_id, service=self.name, dc=self.settings.dc,
                                 reason="shutdown"))), 2)
                await self.bus.close()
        log.info("%s %s stopped", self.name, self.node_id)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self.stopping.set)
        await self.start()
        try:
            await self.stopping.wait()
        finally:
            await self.stop()
