"""SubscriberNegotiation: one offer at a time, bursts coalesced, answers matched by offer id."""

from __future__ import annotations

import asyncio

from livekit.protocol import rtc

from services.media.negotiation import SubscriberNegotiation


class Offers:
    def __init__(self) -> None:
        self.made: list[bool] = []
        self.sent: list[rtc.SignalResponse] = []
        self.sleeps: list[float] = []
        self.closed = False

    async def create(self, ice_restart: bool) -> str:
        self.made.append(ice_restart)
        return f"sdp {len(self.made)}"

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def negotiation(self) -> SubscriberNegotiation:
        return SubscriberNegotiation(self.create, self.sent.append, lambda: self.closed, coalesce=0.1,
                                     sleep=self.sleep)


async def test_the_first_offer_goes_at_once_and_later_ones_wait_for_a_burst() -> None:
    offers = Offers()
    negotiation = offers.negotiation()
    await negotiation.negotiate()
    assert offers.sleeps == [] and [o.offer.id for o in offers.sent] == [1]
    assert negotiation.answers_outstanding(1) and negotiation.answered() is True
    await negotiation.negotiate()
    assert offers.sleeps == [0.1] and [o.offer.id for o in offers.sent] == [1, 2]
    assert negotiation.answered() is False  # only the first answer opens the way for media


async def test_one_offer_at_a_time_and_changes_meanwhile_are_pending() -> None:
    offers = Offers()
    negotiation = offers.negotiation()
    await negotiation.negotiate()
    await negotiation.negotiate()  # asked while offer 1 is out: not sent
    negotiation.note_change()
    assert len(offers.sent) == 1 and negotiation.negotiating and negotiation.pending
    negotiation.answered()
    await negotiation.negotiate(requested=False)  # the pending changes, in one offer
    assert len(offers.sent) == 2 and not negotiation.pending


async def test_answers_to_older_or_already_answered_offers_are_not_applied() -> None:
    offers = Offers()
    negotiation = offers.negotiation()
    assert not negotiation.answers_outstanding(0)  # nothing out
    await negotiation.negotiate()
    assert negotiation.answers_outstanding(0)  # the Rust core answers with id 0
    assert not negotiation.answers_outstanding(7)
    negotiation.answered()
    assert not negotiation.answers_outstanding(1)  # a second answer to offer 1


async def test_an_ice_restart_does_not_wait_and_replaces_a_lost_offer() -> None:
    offers = Offers()
    negotiation = offers.negotiation()
    await negotiation.negotiate()
    negotiation.answered()
    await negotiation.negotiate()  # out, then lost while the client was away
    negotiation.forget_outstanding()
    await negotiation.negotiate(ice_restart=True)
    assert offers.made == [False, False, True] and offers.sleeps == [0.1]
    assert negotiation.outstanding is offers.sent[-1] and negotiation.answers_outstanding(3)


async def test_a_closed_session_makes_no_offer() -> None:
    offers = Offers()
    offers.closed = True
    await offers.negotiation().negotiate()
    assert offers.made == [] and offers.sent == []


async def test_an_offer_that_hangs_is_bounded_by_the_deadline() -> None:
    async def never(ice_restart: bool) -> str:
        await asyncio.Event().wait()
        return ""

    negotiation = SubscriberNegotiation(never, lambda _: None, lambda: False, deadline=0.01)
    try:
        await negotiation.negotiate()
    except TimeoutError:
        pass
    else:
        raise AssertionError("the offer did not time out")
