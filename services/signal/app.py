"""Signal service wiring: the bus, the token verifier and the HTTP/WebSocket server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn

from shared.auth import TokenVerifier
from shared.config import Settings
from shared.contracts.subjects import event_type_filter
from shared.events import Envelope, EventDecodeError, NodeDown
from shared.service import Service

from .denial import DenialNoiseFilter
from .http import build_app
from .rtc import RtcEndpoint

log = logging.getLogger(__name__)

MAX_FRAME = 1 << 20  # a SignalRequest larger than 1 MiB is refused (WebSocket close 1009)
HANDOVER_WAIT = 5.0  # seconds clients get on shutdown to leave by themselves (they resume within ~1 s)


class _HttpServer(uvicorn.Server):
    """uvicorn without its own SIGTERM/SIGINT handling: it would close every WebSocket (1012)
    at once, before the service has handed its clients over (SignalService.on_stop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class SignalService(Service):
    name = "signal"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        settings.require_api_keys()
        self.verifier = TokenVerifier(settings.api_keys)
        self._server: _HttpServer | None = None
        self._server_task: asyncio.Task[None] | None = None
        self.rtc: RtcEndpoint

    def metrics_snapshot(self) -> dict[str, float]:
        counters = self.rtc.counters if hasattr(self, "rtc") else None
        return {"sessions": counters.sessions if counters else 0}

    def region_list(self) -> list[dict[str, str]]:
        host = self.settings.http_host if self.settings.http_host not in ("0.0.0.0", "::") else "127.0.0.1"
        return [{"region": self.settings.region or self.settings.dc,
                 "url": f"ws://{host}:{self.settings.http_port}", "distance": "0"}]

    async def on_start(self) -> None:
        assert self.bus
        logging.getLogger("uvicorn.error").addFilter(DenialNoiseFilter())
        self.rtc = RtcEndpoint(self.bus, self.verifier, self.settings.dc, self.node_id, self.settings.api_keys)
        self.bus.on_disconnect(self.rtc.uplinks.bus_lost)
        self.bus.on_reconnect(self.rtc.uplinks.bus_back)
        await self.bus.subscribe(event_type_filter(self.settings.dc, NodeDown.TYPE), self._on_node_down)
        config = uvicorn.Config(
            build_app(self), host=self.settings.http_host, port=self.settings.http_port, log_level="warning",
            ws="websockets-sansio", ws_max_size=MAX_FRAME, ws_ping_interval=10, ws_ping_timeout=20,
            lifespan="off", access_log=False,
        )
        self._server = _HttpServer(config)
        self._server_task = asyncio.create_task(self._server.serve(), name="signal-http")
        while not self._server.started:
            if self._server_task.done():
                self._server_task.result()
                raise RuntimeError("signal HTTP server stopped while starting")
            await asyncio.sleep(0.02)
        log.info("signal listening on http://%s:%d", self.settings.http_host, self.settings.http_port)

    async def _on_node_down(self, msg: object) -> None:
        try:
            env = Envelope.from_json(msg.data)  # type: ignore[attr-defined]
        except EventDecodeError:
            return
        if isinstance(env.payload, NodeDown) and env.payload.service == "media":
            told = self.rtc.media_node_down(env.payload.node_id)
            if told:
                log.warning("media node %s is down: %d client(s) told to rejoin", env.payload.node_id, told)

    async def on_stop(self) -> None:
        if self._server:
            # Listening stops first, so the clients' resumes reach another instance.
            for server in self._server.servers:
                server.close()
            try:
                await self.rtc.hand_over(HANDOVER_WAIT)
            except Exception:  # the bus may be gone too: the server must stop all the same
                log.exception("handing clients over failed; closing their WebSockets")
            self._server.should_exit = True
        if self._server_task:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server_task, 5)


async def main(settings: Settings) -> None:
    await SignalService(settings).run()
