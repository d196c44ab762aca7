"""ICE consent freshness (RFC 7675) that survives a busy machine.

aioice 0.13's ``Connection.query_consent`` sends one binding request every 4-6 s with *no*
retransmission and a 0.5 s timeout, and closes the connection after 6 consecutive misses. When
either end is short of CPU (a 20-participant join storm on a shared 2-core machine: the client's
network thread or our event loop answers late) every check misses although the peer is alive,
and ~30 s after connecting the PeerConnection closes ("publisher PeerConnection closed").

RFC 7675 §5.1 asks for something else: consent expires when no check has been *answered* for 30
seconds, and a check is an ordinary STUN transaction (retransmitted, RFC 8489 RTO). That is what
:func:`query_consent` does; :func:`install` makes it an aioice ``Connection``'s consent task
(before ``connect()`` starts that task).
"""

from __future__ import annotations

import asyncio
import logging
import random

from aioice import Connection, stun

from . import aiortc_compat

__all__ = ["CONSENT_INTERVAL", "CONSENT_TIMEOUT", "install", "query_consent"]

logger = logging.getLogger(__name__)

CONSENT_INTERVAL = 5.0  # seconds between checks, randomized 0.8-1.2x (RFC 7675 §5.1)
CONSENT_TIMEOUT = 30.0  # no answered check for this long: consent expired (RFC 7675 §5.1)
RETRANSMISSIONS = 2  # requests at 0, 0.5 and 1.5 s; the check fails after 3.5 s (RTO 0.5 s, doubling)


def install(connection: Connection) -> None:
    """Use :func:`query_consent` for this aioice ``Connection`` (idempotent)."""
    aiortc_compat.replace_consent_check(connection, query_consent)


async def query_consent(self: Connection) -> None:
    """The consent task of the aioice ``Connection`` it is bound to. The parameter is named
    ``self`` on purpose: ``MediaPeer.close`` finds the tasks to reap by their coroutine's ``self``."""
    loop = asyncio.get_running_loop()
    answered = loop.time()
    failure: stun.TransactionError | None = None
    while True:
        await asyncio.sleep(CONSENT_INTERVAL * (0.8 + 0.4 * random.random()))
        for pair in aiortc_compat.nominated_pairs(self):
            request = self.build_request(pair, nominate=False)
            password = self.remote_password
            assert password is not None  # set before connect() starts this task
            try:
                await pair.protocol.request(request, pair.remote_addr,
                                            integrity_key=password.encode("utf8"),
                                            retransmissions=RETRANSMISSIONS)
                answered = loop.time()
            except stun.TransactionError as exc:
                failure = exc
        silent = loop.time() - answered
        if silent >= CONSENT_TIMEOUT:
            logger.info("ICE consent expired: no check answered for %.0f s (last: %r, pairs %s)", silent, failure,
                        [(p.local_candidate.host, p.remote_addr) for p in aiortc_compat.nominated_pairs(self)])
            aiortc_compat.forget_consent_task(self)
            await self.close()
            return
