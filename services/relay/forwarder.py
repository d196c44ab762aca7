"""The datagram hot path of a relay: origin, transit and destination in one place.

Per datagram: one struct unpack, a dict lookup by stream id (origin and destination only), AEAD
open/seal, plain non-blocking `sendto`. No await, lock, bus or database call; a send that would
block is dropped and counted, so one slow destination cannot hold back another. Everything the
hot path reads (stream targets, WAN plans, peer addresses, ciphers) is prepared by the control
side (`services.relay.relay`) and swapped in as whole tuples.

* Local datagram (media node -> relay, local wire):
  RTP/RTCP of an exported track at the origin relay -> every local subscriber node (same bytes)
  and one sealed datagram per WAN plan; KEYFRAME from a subscriber node -> the publisher's node
  (same DC) or a WAN KEYFRAME to the origin DC.
* WAN datagram: header checks (route loop-free, this relay is `route[hop]`), replay window,
  AEAD open with the previous hop's link key; then delivered here if `deliver` says so and/or
  re-sealed for the next hop, or, at the route's last relay, copied once to each `deliver` DC
  not on the route (the branches of the distribution tree, one direct hop each). Probes and
  SUBSCRIBE go to the control side by callback.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable

from services.relay.crypto import InvalidTag, LinkCipher, ReplayWindow
from services.relay.wire import HEADER, HEADER_SIZE, MAX_ROUTE, NO_DC, TAG_SIZE, VERSION, Kind, pack_route
from shared.relay_wire import LOCAL_HEADER, LOCAL_HEADER_SIZE, NOT_SIMULCAST, LocalType

Addr = tuple[str, int]
ControlHandler = Callable[[int, int, int, int, bytes], None]  # kind, sender or requester DC, stream, layer, body

_DATA = (Kind.RTP, Kind.RTCP)
_MIN_WAN = HEADER_SIZE + TAG_SIZE
_RECV_BATCH = 256
_NO_DC = bytes((NO_DC,))


class PeerLink:
    """One link as the hot path needs it: where the peer is, its cipher and replay window, and
    the link's counters (each list indexed by `is_data`: 0 control, 1 RTP/RTCP)."""

    __slots__ = ("address", "bytes_in", "bytes_out", "cipher", "packets_in", "packets_out", "window")

    def __init__(self, cipher: LinkCipher, address: Addr) -> None:
        self.cipher = cipher
        self.address = address
        self.window = ReplayWindow()
        self.packets_in, self.bytes_in = [0, 0], [0, 0]
        self.packets_out, self.bytes_out = [0, 0], [0, 0]

    def counters(self) -> dict[str, int]:
        return {f"{part}_{name}": getattr(self, name)[is_data]
                for name in ("bytes_in", "bytes_out", "packets_in", "packets_out")
                for part, is_data in (("ctl", 0), ("data", 1))}


class WanPlan:
    """One sealed datagram per packet of a stream: its route and the DCs delivering it."""

    __slots__ = ("deliver", "next_dc", "route", "route_bytes", "route_len")

    def __init__(self, route: tuple[int, ...], deliver: int) -> None:
        self.route = route
        self.route_bytes = pack_route(route)
        self.route_len = len(route)
        self.deliver = deliver
        self.next_dc = route[1]


class StreamState:
    """Everything the hot path knows about one track. Created by the control side without I/O."""

    __slots__ = ("bytes_in", "bytes_out", "keyframe_to", "local_targets", "origin_dc", "packets_in",
                 "packets_out", "project", "room", "stream", "track_sid", "wan_plans")

    def __init__(self, stream: int, track_sid: str, origin_dc: int, room: str = "", project: str = "") -> None:
        self.stream = stream
        self.track_sid = track_sid
        self.origin_dc = origin_dc
        self.room = room
        self.project = project
        self.local_targets: tuple[Addr, ...] = ()
        self.wan_plans: tuple[WanPlan, ...] = ()
        self.keyframe_to: Addr | None = None  # the publisher's node (origin DC only)
        self.bytes_in = self.packets_in = 0  # WAN payload received for this stream (relay_in)
        self.bytes_out = self.packets_out = 0  # WAN payload sent for this stream (relay_out)


class Forwarder:
    def __init__(self, self_index: int, dc_count: int, wan_sock: socket.socket, local_sock: socket.socket,
                 ciphers: dict[int, LinkCipher], peer_addrs: dict[int, Addr], on_control: ControlHandler) -> None:
        self.index = self_index
        self.dc_count = dc_count
        self.wan_sock = wan_sock
        self.local_sock = local_sock
        self.peers = {i: PeerLink(cipher, peer_addrs[i]) for i, cipher in ciphers.items()}
        self.links: list[PeerLink | None] = [self.peers.get(i) for i in range(256)]  # by DC index
        self.routes: list[tuple[int, ...] | None] = [None] * 256  # current route to each DC, self first
        self.streams: dict[int, StreamState] = {}
        self.drops: Counter[str] = Counter()
        self.on_control = on_control
        self.self_bit = 1 << self_index

    # -- sockets -------------------------------------------------------------------------

    def drain_wan(self) -> None:
        recv = self.wan_sock.recv
        for _ in range(_RECV_BATCH):
            try:
                data = recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.drops["recv_error"] += 1
                return
            self.on_wan(data)

    def drain_local(self) -> None:
        recvfrom = self.local_sock.recvfrom
        for _ in range(_RECV_BATCH):
            try:
                data, addr = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.drops["recv_error"] += 1
                return
            self.on_local(data, addr)

    def ask_keyframe(self, stream: int) -> None:
        """Ask the publisher's node for a keyframe on every layer (a route just changed: what was
        in flight on the old one is lost, and the subscribers' own requests may be too)."""
        state = self.streams.get(stream)
        if state is not None and state.keyframe_to is not None:
            self._send_local(LOCAL_HEADER.pack(LocalType.KEYFRAME, stream, NOT_SIMULCAST), state.keyframe_to)

    def _send_local(self, data: bytes, addr: Addr) -> None:
        try:
            self.local_sock.sendto(data, addr)
        except BlockingIOError:
            self.drops["local_send_would_block"] += 1
        except OSError:
            self.drops["local_send_error"] += 1

    def seal_and_send(self, kind: int, route_bytes: bytes, route_len: int, hop: int, deliver: int, stream: int,
                      layer: int, body: bytes, next_dc: int) -> bool:
        link = self.links[next_dc]
        if link is None:
            self.drops["no_link"] += 1
            return False
        cipher = link.cipher
        cipher.counter += 1
        counter = cipher.counter
        header = HEADER.pack(VERSION, kind, route_len, hop, layer, deliver, counter, stream, route_bytes)
        datagram = header + cipher.seal(counter, body, header)
        try:
            self.wan_sock.sendto(datagram, link.address)
        except BlockingIOError:
            self.drops["wan_send_would_block"] += 1
            return False
        except OSError:
            self.drops["wan_send_error"] += 1
            return False
        is_data = kind <= Kind.RTCP
        link.packets_out[is_data] += 1
        link.bytes_out[is_data] += len(datagram)
        return True

    def send_toward(self, kind: int, dest: int, stream: int, layer: int, body: bytes) -> bool:
        """A datagram from here to `dest` along the current route (control messages)."""
        route = self.routes[dest]
        if route is None:
            self.drops["no_route"] += 1
            return False
        return self.seal_and_send(kind, pack_route(route), len(route), 1, 1 << dest, stream, layer, body, route[1])

    def send_link(self, kind: int, peer: int, body: bytes) -> bool:
        """A one-hop datagram to a neighbour (probes), whatever the routes say."""
        return self.seal_and_send(kind, pack_route((self.index, peer)), 2, 1, 1 << peer, 0, 0, body, peer)

    # -- WAN side ------------------------------------------------------------------------

    def on_wan(self, data: bytes) -> None:
        if len(data) < _MIN_WAN:
            self.drops["malformed"] += 1
            return
        version, kind, route_len, hop, layer, deliver, counter, stream, route_bytes = HEADER.unpack_from(data)
        if version != VERSION or not 1 <= kind <= 6:
            self.drops["malformed"] += 1
            return
        if not 2 <= route_len <= MAX_ROUTE or not 1 <= hop < route_len:
            self.drops["route_invalid"] += 1
            return
        if route_len == 2:  # one hop, the common case: no set to build
            if route_bytes[0] == route_bytes[1]:
                self.drops["route_loop"] += 1
                return
        elif len(set(route_bytes[:route_len])) != route_len:
            self.drops["route_loop"] += 1
            return
        if route_bytes[hop] != self.index:
            self.drops["not_for_me"] += 1
            return
        sender = route_bytes[hop - 1]
        link = self.links[sender]
        if link is None:
            self.drops["unknown_link"] += 1
            return
        window = link.window
        if counter <= window.highest:  # in order is the common case: no window lookup
            stale = window.check(counter)
            if stale is not None:
                self.drops[stale] += 1
                return
        header = data[:HEADER_SIZE]
        try:
            body = link.cipher.open(counter, data[HEADER_SIZE:], header)
        except InvalidTag:
            self.drops["forged"] += 1
            return
        window.mark(counter)
        is_data = kind <= Kind.RTCP
        link.packets_in[is_data] += 1
        link.bytes_in[is_data] += len(data)
        if kind >= Kind.PROBE:  # one-hop link control, never forwarded
            self.on_control(kind, sender, stream, layer, body)
            return
        if deliver & self.self_bit:
            self._deliver(kind, route_bytes[0], stream, layer, body)
        if hop + 1 < route_len:
            next_dc = route_bytes[hop + 1]
            self.seal_and_send(kind, route_bytes, route_len, hop + 1, deliver, stream, layer, body, next_dc)
        elif deliver & ~self.self_bit:
            self._branch(kind, route_bytes, route_len, deliver, stream, layer, body)

    def _branch(self, kind: int, route_bytes: bytes, route_len: int, deliver: int, stream: int, layer: int,
                body: bytes) -> None:
        """Last relay of the route: one copy over the direct link to each `deliver` DC not on the
        route, its route extended by that DC alone (so it can go no further)."""
        for dc in route_bytes[:route_len]:
            deliver &= ~(1 << dc)
        if not deliver:
            return
        if route_len >= MAX_ROUTE:
            self.drops["route_invalid"] += 1
            return
        prefix, hop = route_bytes[:route_len], route_len
        while deliver:
            dc = (deliver & -deliver).bit_length() - 1
            deliver &= deliver - 1
            extended = prefix + bytes((dc,)) + _NO_DC * (MAX_ROUTE - route_len - 1)
            self.seal_and_send(kind, extended, route_len + 1, hop, 1 << dc, stream, layer, body, dc)

    def _deliver(self, kind: int, origin: int, stream: int, layer: int, body: bytes) -> None:
        if kind == Kind.RTP or kind == Kind.RTCP:
            state = self.streams.get(stream)
            if state is None or not state.local_targets:
                self.drops["no_subscriber"] += 1
                return
            state.bytes_in += len(body)
            state.packets_in += 1
            datagram = LOCAL_HEADER.pack(kind, stream, layer) + body
            for address in state.local_targets:
                self._send_local(datagram, address)
        elif kind == Kind.KEYFRAME:
            state = self.streams.get(stream)
            if state is None or state.keyframe_to is None:
                self.drops["no_publisher"] += 1
                return
            self._send_local(LOCAL_HEADER.pack(LocalType.KEYFRAME, stream, layer), state.keyframe_to)
        else:
            self.on_control(kind, origin, stream, layer, body)

    # -- local side ----------------------------------------------------------------------

    def on_local(self, data: bytes, addr: Addr) -> None:
        if len(data) < LOCAL_HEADER_SIZE:
            self.drops["local_malformed"] += 1
            return
        kind, stream, layer = LOCAL_HEADER.unpack_from(data)
        state = self.streams.get(stream)
        if state is None:
            self.drops["unknown_stream"] += 1
            return
        if kind == LocalType.RTP or kind == LocalType.RTCP:
            if state.origin_dc != self.index:
                self.drops["not_origin"] += 1
                return
            for address in state.local_targets:
                self._send_local(data, address)
            plans = state.wan_plans
            if plans:
                body = data[LOCAL_HEADER_SIZE:]
                for plan in plans:
                    if self.seal_and_send(kind, plan.route_bytes, plan.route_len, 1, plan.deliver, stream, layer,
                                          body, plan.next_dc):
                        state.bytes_out += len(body)
                        state.packets_out += 1
        elif kind == LocalType.KEYFRAME:
            if state.origin_dc == self.index:
                if state.keyframe_to is None:
                    self.drops["no_publisher"] += 1
                else:
                    self._send_local(data[:LOCAL_HEADER_SIZE], state.keyframe_to)
            else:
                self.send_toward(Kind.KEYFRAME, state.origin_dc, stream, layer, b"")
        else:
            self.drops["local_malformed"] += 1
