"""Offers on a session's subscriber PeerConnection: ids, one offer at a time, coalescing.

The server offers and the client answers. One offer is out at a time: changes requested while
it is out are offered together once it is answered, and a new offer waits `coalesce` seconds so
a burst (a room whose participants all publish at once) lands in one offer instead of one
renegotiation per track. The first offer (data channels only) and ICE restarts go at once.
Answers are matched to the outstanding offer by id (JS SDKs echo it, the Rust core sends 0).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from livekit.protocol import rtc

log = logging.getLogger(__name__)

OFFER_COALESCE = 0.1  # seconds a subscriber offer waits for more subscription changes
PC_DEADLINE = 10.0  # seconds any single PeerConnection operation may take

CreateOffer = Callable[[bool], Awaitable[str]]  # ice_restart -> offer SDP


class SubscriberNegotiation:
    def __init__(self, create_offer: CreateOffer, send: Callable[[rtc.SignalResponse], None],
                 is_closed: Callable[[], bool], *, coalesce: float = OFFER_COALESCE,
                 deadline: float = PC_DEADLINE, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._create_offer = create_offer
        self._send = send
        self._is_closed = is_closed
        self._coalesce = coalesce
        self._deadline = deadline
        self._sleep = sleep
        self.offer_id = 0
        self.first_answered = False
        self.outstanding: rtc.SignalResponse | None = None  # sent, not answered yet
        self._negotiating = False  # an offer is being built or waits for its answer
        self._changes = 0  # subscription changes requested so far ...
        self._offered = 0  # ... and how many of them the last offer covers

    @property
    def negotiating(self) -> bool:
        return self._negotiating

    @property
    def pending(self) -> bool:
        """Changes were asked for that no offer covers yet."""
        return self._changes > self._offered

    def note_change(self) -> None:
        """A change the next offer must carry, made without asking for an offer now."""
        self._changes += 1

    async def negotiate(self, requested: bool = True, ice_restart: bool = False) -> None:
        if self._is_closed():
            return
        if requested:
            self._changes += 1
        if self._negotiating:
            return
        self._negotiating = True
        if self.first_answered and not ice_restart:
            await self._sleep(self._coalesce)
        self._offered = self._changes
        offer_sdp = await asyncio.wait_for(self._create_offer(ice_restart), self._deadline)
        self.offer_id += 1
        offer = rtc.SignalResponse(offer=rtc.SessionDescription(type="offer", sdp=offer_sdp, id=self.offer_id))
        self.outstanding = offer
        self._send(offer)
        log.debug("offer %d sent (ice restart: %s, changes %d)", self.offer_id, ice_restart, self._offered)

    def answers_outstanding(self, answer_id: int) -> bool:
        """Is this answer for the offer that is out? A second answer to an offer already answered
        (one sent again after a bus outage) or one to an older offer must not be applied."""
        outstanding = self.outstanding
        return outstanding is not None and answer_id in (0, outstanding.offer.id)

    def answered(self) -> bool:
        """The outstanding offer's answer was applied; True the first time (media may follow)."""
        self.outstanding = None
        self._negotiating = False
        first = not self.first_answered
        self.first_answered = True
        return first

    def forget_outstanding(self) -> None:
        """The offer out was lost (sent while the client was away): the next one replaces it."""
        self._negotiating = False
        self.outstanding = None
