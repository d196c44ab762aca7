"""Client frames held across a bus outage (services/signal/uplink.py), against a fake bus."""

from __future__ import annotations

import asyncio

from services.signal.uplink import UpLinks
from shared.bus import NoResponders
from shared.contracts.control import RESYNC_HEADER, CloseSession


class FakeBus:
    def __init__(self) -> None:
        self.is_connected = True
        self.node_answers = True
        self.published: list[tuple[str, bytes, dict[str, str] | None]] = []
        self.requests: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.published.append((subject, data, headers))

    async def request(self, subject: str, data: bytes, timeout: float = 2.0,
                      headers: dict[str, str] | None = None) -> bytes:
        self.requests.append((subject, data))
        if subject.endswith(".ping") and not self.node_answers:
            raise NoResponders(subject)
        return b""


async def settle(bus: FakeBus, predicate: object, within: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, (bus.published, bus.requests)
        await asyncio.sleep(0.01)


async def test_frames_go_straight_out_while_the_bus_is_up() -> None:
    bus = FakeBus()
    links = UpLinks(bus)
    links.open("c1", "media-1", "sess.media-1.PA_a.up")
    await links.forward("c1", b"offer")
    assert bus.published == [("sess.media-1.PA_a.up", b"offer", None)]


async def test_held_frames_wait_for_the_node_then_go_in_order_before_a_resync() -> None:
    bus = FakeBus()
    links = UpLinks(bus)
    links.open("c1", "media-1", "sess.media-1.PA_a.up")
    bus.is_connected = False  # before the disconnect hook has run
    await links.forward("c1", b"answer")
    links.bus_lost()
    await links.forward("c1", b"trickle")
    assert bus.published == [] and links.holding("c1") == 2

    bus.is_connected, bus.node_answers = True, False  # ours is back, the node's is not yet
    links.bus_back()
    await settle(bus, lambda: len(bus.requests) >= 2)
    assert bus.published == []
    bus.node_answers = True
    await settle(bus, lambda: len(bus.published) == 3)
    assert [data for _, data, _ in bus.published] == [b"answer", b"trickle", b""]
    assert bus.published[-1][2] == {RESYNC_HEADER: "c1"}
    await links.forward("c1", b"after")
    assert bus.published[-1] == ("sess.media-1.PA_a.up", b"after", None)


async def test_a_bridge_that_ended_in_the_outage_closes_its_session_after_its_frames() -> None:
    bus = FakeBus()
    links = UpLinks(bus)
    links.open("c1", "media-1", "sess.media-1.PA_a.up")
    links.bus_lost()
    bus.is_connected = False
    await links.forward("c1", b"leave")
    close = CloseSession(participant_sid="PA_a", graceful=True, connection_id="c1")
    await links.close("c1", close)
    assert not [r for r in bus.requests if r[0].endswith(".close")]
    bus.is_connected = True
    links.bus_back()
    await settle(bus, lambda: any(r[0].endswith(".close") for r in bus.requests))
    assert [data for _, data, _ in bus.published] == [b"leave"]  # no resync for a session that left
    assert bus.requests[-1] == ("ctl.media.media-1.close", close.encode())
    assert links.holding("c1") == 0


async def test_a_node_that_never_answers_is_given_up() -> None:
    bus = FakeBus()
    links = UpLinks(bus, release_within=0.2)
    links.open("c1", "media-1", "sess.media-1.PA_a.up")
    links.bus_lost()
    await links.forward("c1", b"x")
    bus.node_answers = False
    links.bus_back()
    await asyncio.sleep(0.6)
    assert bus.published == [] and links.holding("c1") == 0
    await links.forward("c1", b"y")  # the room service declares the node down; nothing waits meanwhile
    assert [data for _, data, _ in bus.published] == [b"y"]
