"""Heartbeats sent from a thread of their own, with their own NATS connection.

A node's liveness must not depend on how busy its event loop is: a media node setting up fifty
PeerConnections can stall its loop for a second or two, and a heartbeat on that loop would get it
declared dead (and every participant migrated) exactly when it is busiest. The loop only refreshes
the load figures; this thread keeps beating as long as the process lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

import nats

log = logging.getLogger(__name__)


class HeartbeatThread:
    def __init__(self, url: str, subject: str, beat: Callable[[], bytes], interval: float, name: str) -> None:
        self.url = url
        self.subject = subject
        self.beat = beat
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        asyncio.run(self._beat_forever())

    async def _beat_forever(self) -> None:
        nc = None
        while not self._stop.is_set():
            try:
                if nc is None or nc.is_closed:
                    nc = await nats.connect(self.url, connect_timeout=2, max_reconnect_attempts=-1,
                                            reconnect_time_wait=0.5, name="heartbeat")
                await nc.publish(self.subject, self.beat())
                await nc.flush(timeout=1)
            except Exception as exc:  # keep beating through bus restarts
                log.debug("heartbeat not sent: %s", exc)
            await asyncio.sleep(self.interval)
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
