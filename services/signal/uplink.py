"""Client frames to the media nodes, across an outage of the bus.

Core NATS keeps nothing for a subscriber that is not there: after a NATS restart, frames our
connection had buffered are flushed as soon as *we* are back, and lost if the media node has not
resubscribed yet (a client's answer, a track publication, a leave). So while the bus is away the
frames of each bridge are held here, in order; once the bus is back and the bridge's media node
answers a ping (its subscriptions are then in place), they are published, followed by a resync
marker (`RESYNC_HEADER`) after which the node resends the room state, since its frames to the
client may have been lost the same way. A bridge that ended meanwhile sends its `CloseSession`
then instead, so the node does not keep a session nobody will resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from shared.bus import BusTimeout, RemoteError
from shared.contracts.control import RESYNC_HEADER, CloseSession
from shared.contracts.subjects import media_node_subject
from shared.tasks import background

log = logging.getLogger(__name__)

RELEASE_WITHIN = 30.0  # seconds to wait for the media node after the bus is back
PING_TIMEOUT = 1.0


class UpBus(Protocol):
    @property
    def is_connected(self) -> bool: ...

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None: ...

    async def request(self, subject: str, data: bytes, timeout: float = 2.0,
                      headers: dict[str, str] | None = None) -> bytes: ...


@dataclass
class _Link:
    node_id: str
    subject: str  # sess.<node>.<sid>.up
    held: deque[bytes] | None = None  # frames waiting for the bus (None: publish at once)
    close: CloseSession | None = None  # the bridge ended while frames were held
    releasing: bool = False
    ended: bool = False


class UpLinks:
    """The up direction of every live bridge, keyed by connection id."""

    def __init__(self, bus: UpBus, release_within: float = RELEASE_WITHIN) -> None:
        self.bus = bus
        self.release_within = release_within
        self._links: dict[str, _Link] = {}

    def open(self, connection_id: str, node_id: str, subject: str) -> None:
        self._links[connection_id] = _Link(node_id, subject, None if self.bus.is_connected else deque())

    def holding(self, connection_id: str) -> int:
        """How many frames of this bridge wait for the bus (tests, logs)."""
        link = self._links.get(connection_id)
        return len(link.held) if link is not None and link.held is not None else 0

    async def forward(self, connection_id: str, data: bytes) -> None:
        link = self._links[connection_id]
        if link.held is None and not self.bus.is_connected:
            link.held = deque()  # lost before the disconnect hook ran
        if link.held is not None:
            link.held.append(data)
            return
        await self.bus.publish(link.subject, data)

    async def close(self, connection_id: str, message: CloseSession) -> None:
        """The bridge ended: tell its node now, or after the held frames once the bus is back."""
        link = self._links.get(connection_id)
        if link is None:
            return
        link.ended = True
        if link.held is not None:
            link.close = message
            return
        del self._links[connection_id]
        await self._send_close(link.node_id, message)

    async def _send_close(self, node_id: str, message: CloseSession) -> None:
        with contextlib.suppress(Exception):  # a node that is gone has nothing to close
            await self.bus.request(media_node_subject(node_id, "close"), message.encode(), timeout=2.0)

    def bus_lost(self) -> None:
        for link in self._links.values():
            if link.held is None:
                link.held = deque()

    def bus_back(self) -> None:
        for connection_id, link in self._links.items():
            if link.held is not None and not link.releasing:
                link.releasing = True
                background(self._release(connection_id, link), f"uplink-release-{connection_id[:8]}")

    async def _release(self, connection_id: str, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.release_within
        while True:
            try:
                await self.bus.request(media_node_subject(link.node_id, "ping"), b"", timeout=PING_TIMEOUT)
                break
            except (BusTimeout, RemoteError):
                if loop.time() > deadline:
                    # The node is gone for good: the room service declares it down and the
                    # clients rejoin elsewhere; what was held is moot.
                    log.warning("media node %s did not answer for %.0f s after the bus came back; "
                                "dropping %d held frame(s)", link.node_id, self.release_within,
                                len(link.held or ()))
                    link.held, link.releasing = None, False
                    if link.ended:
                        self._links.pop(connection_id, None)
                    return
                await asyncio.sleep(0.25)
        assert link.held is not None
        sent = 0
        while link.held:  # (frames that arrive while we publish join the end)
            await self.bus.publish(link.subject, link.held.popleft())
            sent += 1
        link.held, link.releasing = None, False
        if sent:
            log.info("bus back: %d held frame(s) sent to %s", sent, link.node_id)
        if link.ended:
            self._links.pop(connection_id, None)
            if link.close is not None:
                await self._send_close(link.node_id, link.close)
        else:
            await self.bus.publish(link.subject, b"", headers={RESYNC_HEADER: connection_id})
