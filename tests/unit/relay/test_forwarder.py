"""The forwarder on real loopback UDP sockets: three relays' data planes, no control side."""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterator

import pytest

from services.relay.crypto import LinkCipher
from services.relay.forwarder import Forwarder, StreamState, WanPlan
from services.relay.routing import merge_routes
from services.relay.wire import HEADER, HEADER_SIZE, VERSION, Kind, deliver_mask
from shared.relay_wire import LocalType, encode_local, parse_local, stream_id
from tests.support.sockets import loopback_udp

KEYS = {frozenset((a, b)): os.urandom(32) for a in range(3) for b in range(3) if a < b}



class Mesh:
    """Three forwarders (dc indices 0, 1, 2) wired in a full mesh, pumped by hand."""

    def __init__(self) -> None:
        self.wan = [loopback_udp() for _ in range(3)]
        self.local = [loopback_udp() for _ in range(3)]
        self.control: list[tuple[int, int, int, int, bytes]] = []
        self.nodes: list[Forwarder] = []
        for i in range(3):
            peers = [j for j in range(3) if j != i]
            ciphers = {j: LinkCipher(KEYS[frozenset((i, j))], i, j) for j in peers}
            addrs = {j: self.wan[j].getsockname() for j in peers}
            self.nodes.append(Forwarder(i, 3, self.wan[i], self.local[i], ciphers, addrs,
                                        lambda *args, i=i: self.control.append((i, *args))))

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            ready, _, _ = select.select(self.wan + self.local, [], [], 0.02)
            if not ready:
                return
            for node in self.nodes:
                node.drain_wan()
                node.drain_local()

    def close(self) -> None:
        for sock in self.wan + self.local:
            sock.close()


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    m = Mesh()
    yield m
    m.close()


def receive_all(sock: socket.socket) -> list[bytes]:
    out = []
    while select.select([sock], [], [], 0.05)[0]:
        out.append(sock.recv(65535))
    return out


def setup_stream(mesh: Mesh, routes: dict[int, tuple[int, ...]]) -> tuple[int, socket.socket, list[socket.socket]]:
    """Stream published in dc0; one subscriber node per destination DC."""
    sid = stream_id("TR_test")
    origin = StreamState(sid, "TR_test", 0, "room", "proj")
    origin.wan_plans = tuple(WanPlan(route, deliver_mask(dests)) for route, dests in merge_routes(routes))
    mesh.nodes[0].streams[sid] = origin
    subscribers = []
    for dest in routes:
        node_sock = loopback_udp()
        subscribers.append(node_sock)
        state = StreamState(sid, "TR_test", 0, "room", "proj")
        state.local_targets = (node_sock.getsockname(),)
        mesh.nodes[dest].streams[sid] = state
    publisher = loopback_udp()
    return sid, publisher, subscribers


def test_origin_transit_destination_delivers_and_reseals(mesh: Mesh) -> None:
    sid, publisher, (sub2,) = setup_stream(mesh, {2: (0, 1, 2)})
    for seq in range(5):
        publisher.sendto(encode_local(LocalType.RTP, sid, 1, b"rtp%d" % seq), mesh.local[0].getsockname())
    mesh.pump()
    got = [parse_local(d) for d in receive_all(sub2)]
    assert [(k, s, layer, p) for k, s, layer, p in got] == [(LocalType.RTP, sid, 1, b"rtp%d" % i) for i in range(5)]
    assert mesh.nodes[1].peers[0].packets_in[1] == 5  # transit got them from dc0 ...
    assert mesh.nodes[1].peers[2].packets_out[1] == 5  # ... and re-sealed them for dc2
    assert mesh.nodes[0].peers[2].packets_out[1] == 0  # nothing on the direct link
    assert mesh.nodes[1].drops["no_subscriber"] == 0  # transit does not deliver (not in the mask)


def test_prefix_merge_sends_one_copy_per_link(mesh: Mesh) -> None:
    sid, publisher, (sub2, sub1) = setup_stream(mesh, {2: (0, 1, 2), 1: (0, 1)})
    publisher.sendto(encode_local(LocalType.RTCP, sid, 255, b"sr"), mesh.local[0].getsockname())
    mesh.pump()
    assert [parse_local(d)[3] for d in receive_all(sub1)] == [b"sr"]
    assert [parse_local(d)[3] for d in receive_all(sub2)] == [b"sr"]
    assert mesh.nodes[0].peers[1].packets_out[1] == 1
    assert mesh.nodes[0].peers[2].packets_out[1] == 0
    assert mesh.nodes[0].streams[sid].packets_out == 1


def test_last_relay_branches_to_destinations_behind_it(mesh: Mesh) -> None:
    """dc1 and dc2 behind dc1 (say dc0-dc2 is down): one datagram to dc1, which delivers it and
    sends the one copy dc2 needs over its direct link."""
    sid, publisher, (sub1, sub2) = setup_stream(mesh, {1: (0, 1), 2: (0, 1, 2)})
    assert [(p.route, p.deliver) for p in mesh.nodes[0].streams[sid].wan_plans] == [((0, 1), 0b110)]
    for seq in range(3):
        publisher.sendto(encode_local(LocalType.RTP, sid, 0, b"p%d" % seq), mesh.local[0].getsockname())
    mesh.pump()
    assert [parse_local(d)[3] for d in receive_all(sub1)] == [b"p0", b"p1", b"p2"]
    assert [parse_local(d)[3] for d in receive_all(sub2)] == [b"p0", b"p1", b"p2"]
    assert mesh.nodes[0].peers[1].packets_out[1] == 3
    assert mesh.nodes[0].peers[2].packets_out[1] == 0
    assert mesh.nodes[1].peers[2].packets_out[1] == 3


def test_branches_never_return_to_a_dc_on_the_route(mesh: Mesh) -> None:
    """A deliver mask naming the origin is not a branch back to it (no loop via the mask)."""
    sid, publisher, (sub1,) = setup_stream(mesh, {1: (0, 1)})
    mesh.nodes[0].streams[sid].wan_plans = (WanPlan((0, 1), deliver_mask([0, 1])),)
    publisher.sendto(encode_local(LocalType.RTP, sid, 0, b"x"), mesh.local[0].getsockname())
    mesh.pump()
    assert len(receive_all(sub1)) == 1
    assert mesh.nodes[1].peers[0].packets_out[1] == 0


def test_keyframe_request_travels_back_to_the_publisher(mesh: Mesh) -> None:
    sid, publisher, (sub2,) = setup_stream(mesh, {2: (0, 2)})
    mesh.nodes[0].streams[sid].keyframe_to = publisher.getsockname()
    mesh.nodes[2].routes[0] = (2, 1, 0)
    sub2.sendto(encode_local(LocalType.KEYFRAME, sid, 2), mesh.local[2].getsockname())
    mesh.pump()
    assert [parse_local(d)[:3] for d in receive_all(publisher)] == [(LocalType.KEYFRAME, sid, 2)]
    assert mesh.nodes[1].peers[2].packets_in[0] == 1  # it went the route dc2 chose, via dc1


def test_forged_replayed_and_looping_datagrams_are_dropped_and_counted(mesh: Mesh) -> None:
    sid, publisher, (sub2,) = setup_stream(mesh, {2: (0, 2)})
    capture = loopback_udp()
    mesh.nodes[0].peers[2].address = capture.getsockname()  # tap the dc0 -> dc2 link
    publisher.sendto(encode_local(LocalType.RTP, sid, 0, b"x" * 100), mesh.local[0].getsockname())
    mesh.pump()
    (genuine,) = receive_all(capture)
    attacker = loopback_udp()
    dc2 = mesh.wan[2].getsockname()
    tampered = bytearray(genuine)
    tampered[-20] ^= 1
    attacker.sendto(bytes(tampered), dc2)
    forged_header = bytearray(genuine)
    forged_header[HEADER_SIZE - 5] ^= 1  # the stream id is authenticated too
    attacker.sendto(bytes(forged_header), dc2)
    mesh.pump()  # forgeries first: they must not move the replay window
    attacker.sendto(genuine, dc2)
    mesh.pump()
    attacker.sendto(genuine, dc2)  # replay
    looping = HEADER.pack(VERSION, Kind.RTP, 3, 1, 0, deliver_mask([2]), 1, sid, bytes([0, 2, 0, 255]))
    attacker.sendto(looping + b"\0" * 16, dc2)
    attacker.sendto(b"short", dc2)
    mesh.pump()
    assert len(receive_all(sub2)) == 1
    drops = mesh.nodes[2].drops
    assert drops["replayed"] == 1
    assert drops["forged"] == 2
    assert drops["malformed"] == 1
    assert drops["route_loop"] == 1


def test_route_repeating_a_dc_is_never_forwarded(mesh: Mesh) -> None:
    """A relay that believes dc2 is reached through dc0 cannot bounce a datagram back: the route
    in the header repeats dc0, so dc1 drops it before looking at anything else."""
    cipher = mesh.nodes[0].peers[1].cipher
    route = bytes([0, 1, 0, 2])
    cipher.counter += 1
    header = HEADER.pack(VERSION, Kind.RTP, 4, 1, 0, deliver_mask([2]), cipher.counter, 1, route)
    mesh.wan[0].sendto(header + cipher.seal(cipher.counter, b"payload", header), mesh.wan[1].getsockname())
    mesh.pump()
    assert mesh.nodes[1].drops["route_loop"] == 1
    assert mesh.nodes[1].peers[0].packets_out[1] == 0


def test_local_garbage_and_unknown_streams_are_counted(mesh: Mesh) -> None:
    sock = loopback_udp()
    sock.sendto(b"\x01", mesh.local[0].getsockname())
    sock.sendto(encode_local(LocalType.RTP, 42, 0, b"x"), mesh.local[0].getsockname())
    mesh.pump()
    assert mesh.nodes[0].drops["local_malformed"] == 1
    assert mesh.nodes[0].drops["unknown_stream"] == 1
