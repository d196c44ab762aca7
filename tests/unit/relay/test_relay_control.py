"""The relay's control side (services/relay/relay.py): two relays on loopback UDP in one event
loop; the publisher's node is a plain function answering export requests."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import time
from collections.abc import AsyncIterator

import pytest

from services.relay.relay import Relay
from shared.contracts.relay import RelaySubscribe, TrackExport, TrackExported
from shared.events import EventPayload, LinkStateChanged, LinkStatus
from shared.relay_wire import LocalType, encode_local, parse_local, stream_id
from tests.support.sockets import loopback_udp


class Node:
    """A media node: answers export requests, receives deliveries."""

    def __init__(self) -> None:
        self.sock = loopback_udp()
        self.exports: list[tuple[str, TrackExport]] = []

    async def request(self, subject: str, data: bytes, timeout: float) -> bytes:
        self.exports.append((subject, TrackExport.decode(data)))
        return TrackExported(source=f"127.0.0.1:{self.sock.getsockname()[1]}").encode()


class Pair:
    def __init__(self) -> None:
        key = os.urandom(32)
        self.wan = {dc: loopback_udp() for dc in ("dc1", "dc2")}
        self.node = Node()
        self.events: list[EventPayload] = []
        self.relays = {}
        for dc, other in (("dc1", "dc2"), ("dc2", "dc1")):
            local = loopback_udp()
            self.relays[dc] = Relay(dc, ["dc1", "dc2"], {other: key}, {other: self.wan[other].getsockname()},
                                    self.wan[dc], local, f"127.0.0.1:{local.getsockname()[1]}", self.node.request,
                                    self.events.append)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = Pair()
    for relay in p.relays.values():
        relay.start()
    yield p
    for relay in p.relays.values():
        await relay.stop()


async def until(predicate, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def subscribe(track: str, origin_dc: str, deliver_to: socket.socket, ttl_s: float = 5) -> RelaySubscribe:
    return RelaySubscribe(room="r", project="p", track_sid=track, origin_dc=origin_dc, origin_node="node-pub",
                          deliver_to=f"127.0.0.1:{deliver_to.getsockname()[1]}", ttl_s=ttl_s)


async def test_remote_subscription_exports_and_forwards_then_unsubscribes(pair: Pair) -> None:
    await until(lambda: all(r.router.routes for r in pair.relays.values()))
    assert any(isinstance(e, LinkStateChanged) and e.status == LinkStatus.UP for e in pair.events)
    subscriber = loopback_udp()
    pair.relays["dc2"].subscribe(subscribe("TR_1", "dc1", subscriber))
    dc1 = pair.relays["dc1"]
    await until(lambda: bool(pair.node.exports))
    subject, export = pair.node.exports[0]
    assert subject == "ctl.media.node-pub.export" and export.deliver_to == dc1.relay_local and export.ttl_s > 0
    sid = stream_id("TR_1")
    await until(lambda: dc1.forwarder.streams.get(sid) is not None and bool(dc1.forwarder.streams[sid].wan_plans))
    pair.node.sock.sendto(encode_local(LocalType.RTP, sid, 255, b"hello"), dc1.forwarder.local_sock.getsockname())
    await until(lambda: bool(_readable(subscriber)))
    assert parse_local(subscriber.recv(2048)) == (LocalType.RTP, sid, 255, b"hello")

    pair.relays["dc2"].subscribe(subscribe("TR_1", "dc1", subscriber, ttl_s=0))
    await until(lambda: sid not in dc1.forwarder.streams)  # the WAN SUBSCRIBE ttl 0 reached the origin
    await until(lambda: pair.node.exports[-1][1].ttl_s == 0)  # and the export was withdrawn


async def test_same_dc_track_fans_out_locally_without_wan(pair: Pair) -> None:
    dc1 = pair.relays["dc1"]
    a, b = loopback_udp(), loopback_udp()
    dc1.subscribe(subscribe("TR_2", "dc1", a))
    dc1.subscribe(subscribe("TR_2", "dc1", b))
    await until(lambda: bool(pair.node.exports))
    sid = stream_id("TR_2")
    await until(lambda: dc1.forwarder.streams[sid].keyframe_to is not None)
    pair.node.sock.sendto(encode_local(LocalType.RTP, sid, 0, b"x"), dc1.forwarder.local_sock.getsockname())
    await until(lambda: bool(_readable(a)) and bool(_readable(b)))
    assert dc1.forwarder.peers[1].packets_out[1] == 0
    a.sendto(encode_local(LocalType.KEYFRAME, sid, 1), dc1.forwarder.local_sock.getsockname())
    await until(lambda: bool(_readable(pair.node.sock)))
    assert parse_local(pair.node.sock.recv(2048))[:3] == (LocalType.KEYFRAME, sid, 1)


async def test_unknown_origin_dc_is_a_clear_error(pair: Pair) -> None:
    with pytest.raises(ValueError, match="unknown origin datacenter 'dc9'"):
        pair.relays["dc1"].subscribe(subscribe("TR_3", "dc9", loopback_udp()))
    assert not pair.relays["dc1"].forwarder.streams


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


async def test_stopping_withdraws_subscriptions_at_once(pair: Pair) -> None:
    await until(lambda: all(r.router.routes for r in pair.relays.values()))
    pair.relays["dc2"].subscribe(subscribe("TR_4", "dc1", loopback_udp()))
    sid = stream_id("TR_4")
    dc1 = pair.relays["dc1"]
    await until(lambda: sid in dc1.forwarder.streams and bool(pair.node.exports))
    await pair.relays["dc2"].stop()
    await until(lambda: sid not in dc1.forwarder.streams, timeout=1.0)  # not after the 3.5 s lapse
    await until(lambda: pair.node.exports[-1][1].ttl_s == 0, timeout=1.0)


async def test_publisher_moving_to_another_node_moves_the_export(pair: Pair) -> None:
    await until(lambda: all(r.router.routes for r in pair.relays.values()))
    subscriber = loopback_udp()
    pair.relays["dc2"].subscribe(subscribe("TR_5", "dc1", subscriber))
    await until(lambda: any(subject == "ctl.media.node-pub.export" for subject, _ in pair.node.exports))
    moved = subscribe("TR_5", "dc1", subscriber).model_copy(update={"origin_node": "node-new"})
    pair.relays["dc2"].subscribe(moved)
    # the origin relay asks the new node and releases the old one, without waiting for a lapse
    exports = pair.node.exports
    await until(lambda: any(subject == "ctl.media.node-new.export" and e.ttl_s > 0 for subject, e in exports))
    await until(lambda: any(subject == "ctl.media.node-pub.export" and e.ttl_s == 0 for subject, e in exports))
