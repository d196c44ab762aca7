"""Down frames are fenced by signal connection: after a resume, frames for the new WebSocket
never reach a bridge still open for the old one (services/signal/rtc.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from services.signal.rtc import CLOSE_HEADER, CONNECTION_HEADER, DOWN_QUEUE, RtcEndpoint
from shared.auth import TokenVerifier


@dataclass
class Frame:
    data: bytes
    headers: dict[str, str] | None = field(default=None)


def endpoint() -> RtcEndpoint:
    return RtcEndpoint(bus=None, verifier=TokenVerifier({"k": "s" * 32}), dc="dc1", node_id="signal-1")  # type: ignore[arg-type]


async def test_frames_for_another_connection_are_dropped() -> None:
    down: asyncio.Queue[tuple[bytes, str | None]] = asyncio.Queue(DOWN_QUEUE)
    handler = endpoint()._down_handler("PA_x", "conn-old", down)
    await handler(Frame(b"mine", {CONNECTION_HEADER: "conn-old"}))
    await handler(Frame(b"theirs", {CONNECTION_HEADER: "conn-new"}))
    await handler(Frame(b"unlabelled"))  # a node that does not label its frames is still heard
    await handler(Frame(b"bye", {CONNECTION_HEADER: "conn-old", CLOSE_HEADER: "leave"}))
    got = [down.get_nowait() for _ in range(down.qsize())]
    assert got == [(b"mine", None), (b"unlabelled", None), (b"bye", "leave")]


async def test_a_client_that_stops_reading_is_cut_loose() -> None:
    down: asyncio.Queue[tuple[bytes, str | None]] = asyncio.Queue(2)
    handler = endpoint()._down_handler("PA_x", "c", down)
    for index in range(3):
        await handler(Frame(bytes([index]), {CONNECTION_HEADER: "c"}))
    assert [down.get_nowait() for _ in range(down.qsize())] == [(b"", "slow_client")]
