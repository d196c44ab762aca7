"""ICE restart for aiortc, which has none.

An aiortc ``RTCIceTransport`` is bound for life to one aioice ``Connection`` (one ufrag/pwd, one
set of sockets, one nominated pair); a remote description with new ICE credentials is ignored.
:class:`IceSwitch` adds restarts without touching DTLS: the DTLS transport (and with it SRTP keys
and the SCTP association) stays, and only the ICE layer under it is replaced.

A restart, per RFC 8445 §9, keeps using the old pair until the new one is selected:

1. :meth:`IceSwitch.begin` creates a fresh ``Connection`` (new ufrag/pwd, same role and servers),
   gathers its candidates on the configured port range, and makes it the transport's and the
   gatherer's connection, so the next local description advertises it and remote candidates
   go to it. Datagrams it receives join the old connection's queue, which DTLS reads; sends
   still go through the old pair.
2. :meth:`IceSwitch.connect` is called once the remote credentials are known (the restart
   offer we answer, or the answer to our restart offer); it runs the checks in the background.
3. When the new connection nominates a pair it becomes the active one (sends and receives), the
   old connection is closed, and ``on_switched`` runs so the caller can move its own fast path.
   If it fails or misses its deadline, both connections are closed and the transport reports
   ``failed``, as it would on any ICE failure.

While a restart is pending, losing the old connection (consent expired because the client moved)
does not end DTLS: reads wait for the new connection instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aioice import Connection
from aiortc.rtcicetransport import RTCIceTransport

from shared.errors import MediaError

from . import aiortc_compat

logger = logging.getLogger(__name__)

__all__ = ["OLD_LINGER", "RESTART_DEADLINE", "IceRestartError", "IceSwitch"]

RESTART_DEADLINE = 20.0  # seconds the new connection has to nominate a pair
OLD_LINGER = 5.0  # seconds the replaced connection keeps receiving after the switch


class IceRestartError(MediaError, RuntimeError):
    """A restart was asked for in a state where it cannot happen."""


class IceSwitch:
    """Routes an ``RTCIceTransport``'s reads and writes through whichever connection is active."""

    def __init__(self, transport: RTCIceTransport, on_switched: Callable[[], None] | None = None) -> None:
        self.transport = transport
        self.active: Connection = aiortc_compat.ice_connection(transport)
        self.pending: Connection | None = None
        self.on_switched = on_switched
        self.restarts = 0
        self._settled: asyncio.Future[bool] | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._begun_at = 0.0
        aiortc_compat.route_ice_io(transport, self.recv, self.send)

    @classmethod
    def of(cls, transport: RTCIceTransport, on_switched: Callable[[], None] | None = None) -> IceSwitch:
        """The switch installed on this transport, installing one the first time."""
        switch = getattr(transport, "_meshrtc_switch", None)
        if switch is None:
            switch = cls(transport, on_switched)
            transport._meshrtc_switch = switch  # type: ignore[attr-defined]
        elif on_switched is not None:
            switch.on_switched = on_switched
        return switch

    @staticmethod
    def installed_on(transport: RTCIceTransport) -> IceSwitch | None:
        """The switch of this transport, if one was installed (without installing one)."""
        switch: IceSwitch | None = getattr(transport, "_meshrtc_switch", None)
        return switch

    @property
    def restarting(self) -> bool:
        return self.pending is not None

    @property
    def awaiting_remote(self) -> bool:
        """Begun, but the remote credentials have not been given yet."""
        return self.pending is not None and self._connect_task is None

    def is_new_remote(self, remote_username: str | None) -> bool:
        """A remote description with these credentials asks for an ICE restart."""
        if not remote_username or self.active.remote_username in (None, remote_username):
            return False
        return self.pending is None or self.pending.remote_username != remote_username

    # ---- data path used by RTCDtlsTransport -------------------------------------------------
    async def recv(self) -> bytes:
        while True:
            connection = self.active
            try:
                return await connection.recv()
            except ConnectionError:
                if self.active is not connection:
                    continue  # switched while we waited: read from the new one
                settled = self._settled
                if self.pending is not None and settled is not None:
                    await asyncio.shield(settled)  # the old path died first; wait for the new one
                    if self.active is not connection:
                        continue
                raise

    async def send(self, data: bytes) -> None:
        await self.active.send(data)

    # ---- restart ----------------------------------------------------------------------------
    async def begin(self) -> Connection:
        """Gather a fresh connection and make it the one the next description advertises."""
        if self.transport.state in ("closed", "failed"):
            raise IceRestartError(f"ICE transport is {self.transport.state}")
        if self.pending is not None:
            await self._abandon(self.pending)
        old = self.active
        new = aiortc_compat.connection_like(old)
        await new.gather_candidates()
        # Until it is nominated, what arrives on the new sockets joins the queue DTLS reads.
        aiortc_compat.redirect_connection_data(new, self._into_active_queue)
        self.pending = new
        self._settled = asyncio.get_running_loop().create_future()
        self._begun_at = asyncio.get_running_loop().time()
        self._connect_task = None
        aiortc_compat.switch_ice_connection(self.transport, new, gathering=True)
        self._watch(new)
        self.restarts += 1
        logger.debug("ICE restart %d: gathered %d candidate(s), ufrag %s", self.restarts,
                     len(new.local_candidates), new.local_username)
        return new

    def connect(self, remote_username: str, remote_password: str, deadline: float = RESTART_DEADLINE) -> None:
        """Start the checks of the pending connection against the remote's new credentials."""
        new = self.pending
        if new is None:
            raise IceRestartError("no ICE restart is pending")
        if self._connect_task is not None:
            return
        new.remote_username = remote_username
        new.remote_password = remote_password
        self._connect_task = asyncio.ensure_future(self._run(new, deadline))

    async def _run(self, new: Connection, deadline: float) -> None:
        try:
            await asyncio.wait_for(new.connect(), deadline)
        except (ConnectionError, TimeoutError) as exc:
            if self.pending is new:
                logger.info("ICE restart failed: %r", exc)
                await self._fail(new)
            return
        if self.pending is not new:
            return
        self._promote(new)

    def _promote(self, new: Connection) -> None:
        old = self.active
        # Datagrams the old connection queued but DTLS did not read yet keep their order.
        new_queue, old_queue = aiortc_compat.connection_queue(new), aiortc_compat.connection_queue(old)
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                new_queue.put_nowait(old_queue.get_nowait())
        aiortc_compat.keep_connection_data(new)  # back to aioice's own method: its own queue
        self.active = new
        self.pending = None
        self._connect_task = None
        if self._settled is not None and not self._settled.done():
            self._settled.set_result(True)
        # The remote may still send on the old pair for a moment (its switch is not ours): the old
        # sockets keep receiving for OLD_LINGER seconds, into the new queue, then close.
        aiortc_compat.redirect_connection_data(old, self._into_active_queue)
        old_queue.put_nowait(None)  # a read waiting on the old queue moves to the new one
        background_close(old, OLD_LINGER)
        logger.info("ICE restart %d (%s): switched to the new connection %.2f s after it began", self.restarts,
                    "controlling" if new.ice_controlling else "controlled",
                    asyncio.get_running_loop().time() - self._begun_at)
        if self.on_switched is not None:
            try:
                self.on_switched()
            except Exception:
                logger.exception("ICE restart: on_switched failed")

    async def _fail(self, new: Connection) -> None:
        self.pending = None
        self._connect_task = None
        if self._settled is not None and not self._settled.done():
            self._settled.set_result(False)
        old, self.active = self.active, new
        # Closing the transport's connection makes its monitor report "failed"; the old one
        # goes too (it may still carry media, but the peer asked for a path we cannot give).
        await asyncio.gather(new.close(), old.close(), return_exceptions=True)

    async def _abandon(self, connection: Connection) -> None:
        """A second restart before the first one finished: the first one's connection is dropped."""
        if self._connect_task is not None:
            self._connect_task.cancel()
        self.pending = None
        self._connect_task = None
        aiortc_compat.switch_ice_connection(self.transport, self.active)
        self._watch(self.active)
        with contextlib.suppress(Exception):
            await connection.close()

    def _into_active_queue(self, data: bytes, component: int) -> None:
        # Not the media path: SRTP on these sockets is taken by the peer's socket hook first.
        aiortc_compat.connection_queue(self.active).put_nowait((data, component))

    def _watch(self, connection: Connection) -> None:
        """aiortc's monitor waits on one connection's events; point it at `connection`."""
        aiortc_compat.watch_ice_connection(self.transport, connection)

    async def close(self) -> None:
        """Close connections the transport no longer knows about (its own is closed by aiortc)."""
        if self._connect_task is not None:
            self._connect_task.cancel()
        current = aiortc_compat.ice_connection(self.transport)
        for connection in (self.active, self.pending):
            if connection is not None and connection is not current:
                with contextlib.suppress(Exception):
                    await connection.close()


_closing: set[asyncio.Task[Any]] = set()


def background_close(connection: Connection, delay: float = 0.0) -> None:
    async def close() -> None:
        await asyncio.sleep(delay)
        await connection.close()

    task = asyncio.ensure_future(close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)
