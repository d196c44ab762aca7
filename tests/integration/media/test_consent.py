"""ICE consent freshness (services/media/webrtc/consent.py) between two real aioice connections
on loopback UDP: late answers keep consent, silence expires it after CONSENT_TIMEOUT."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aioice
import aioice.ice
import pytest

from services.media.webrtc import IceConfig, configure_ice, consent, reset_ice


@pytest.fixture(autouse=True)
def fast_consent(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_ice(IceConfig(host_addresses=("127.0.0.1",)))
    monkeypatch.setattr(consent, "CONSENT_INTERVAL", 0.4)
    monkeypatch.setattr(consent, "CONSENT_TIMEOUT", 3.0)
    # aioice's own check at the same pace: were it running, 6 late answers (~2.4 s) would close
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.4)
    yield
    reset_ice()


async def connected_pair() -> tuple[aioice.Connection, aioice.Connection]:
    ours = aioice.Connection(ice_controlling=True, components=1)
    theirs = aioice.Connection(ice_controlling=False, components=1)
    consent.install(ours)
    await asyncio.gather(ours.gather_candidates(), theirs.gather_candidates())
    for a, b in ((ours, theirs), (theirs, ours)):
        a.remote_username, a.remote_password = b.local_username, b.local_password
        for candidate in b.local_candidates:
            await a.add_remote_candidate(candidate)
        await a.add_remote_candidate(None)
    await asyncio.wait_for(asyncio.gather(ours.connect(), theirs.connect()), 10)
    return ours, theirs


def delay_incoming(connection: aioice.Connection, delay: float | None) -> None:
    """The peer answers `delay` seconds late (None: never), like a starved client."""
    for protocol in connection._protocols:
        original = protocol.datagram_received

        def late(data: bytes, addr: tuple[str, int], original=original) -> None:
            if delay is not None:
                asyncio.get_running_loop().call_later(delay, original, data, addr)

        protocol.datagram_received = late


@pytest.fixture
async def pair() -> AsyncIterator[tuple[aioice.Connection, aioice.Connection]]:
    ours, theirs = await connected_pair()
    yield ours, theirs
    await asyncio.gather(ours.close(), theirs.close())


def alive(connection: aioice.Connection) -> bool:
    return connection._query_consent_task is not None and not connection._query_consent_task.done()


async def test_answers_later_than_aioice_tolerates_keep_consent(pair: tuple[aioice.Connection, ...]) -> None:
    ours, theirs = pair
    delay_incoming(theirs, 1.0)  # aioice alone fails every such check (0.5 s, no retransmission)
    await asyncio.sleep(2 * consent.CONSENT_TIMEOUT)
    assert alive(ours)


async def test_silence_expires_consent_after_the_timeout(pair: tuple[aioice.Connection, ...]) -> None:
    ours, theirs = pair
    delay_incoming(theirs, None)
    started = time.monotonic()
    while alive(ours) and time.monotonic() - started < 15:
        await asyncio.sleep(0.1)
    took = time.monotonic() - started
    assert not alive(ours), "consent never expired"
    # the last answer came just before the silence: expiry after the timeout, within a check's length
    assert consent.CONSENT_TIMEOUT - 0.5 <= took <= consent.CONSENT_TIMEOUT + 1.2 * consent.CONSENT_INTERVAL + 5
