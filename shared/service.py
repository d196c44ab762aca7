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
from shared.events import Envelope, NodeDown, NodeHeartbeat, NodeUp

log = logging.getLogger(__name__)

VERSION = "1.9.0"  # the LiveKit server version we present; clients require semver >= 1.8


def heartbeat_subject(dc: str, service: str) -> str:
    return f"heartbeat.{dc}.{service}"


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

    # ---- hooks -------------------------------------------------------------------------
    async def on_start(self) -> None: ...

    async def on_stop(self) -> None: ...

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
        await self.bus.ensure_streams()
        await self.on_start()
        await self.bus.publish_event(self.envelope(
            NodeUp(node_id=self.node_id, service=self.name, dc=self.settings.dc, version=VERSION)))
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name=f"{self.name}-heartbeat")
        log.info("%s %s started (dc=%s, nats=%s)", self.name, self.node_id, self.settings.dc, self.settings.nats_url)

    async def _heartbeat_loop(self) -> None:
        assert self.bus
        subject = heartbeat_subject(self.settings.dc, self.name)
        interval = self.settings.heartbeat_ms / 1000
        while True:
            try:
                await self.bus.publish(subject, self.envelope(self.heartbeat_load()).to_json())
            except Exception as exc:  # the bus reconnects by itself; keep beating
                log.debug("heartbeat not sent: %s", exc)
            await asyncio.sleep(interval)

    async def stop(self) -> None:
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
