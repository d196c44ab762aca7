"""The WAN wire between relays: a clear, authenticated header and an AEAD-sealed body.

```
0        1      2          3     4       5            7            15             23         27
| version | kind | route_len | hop | layer | deliver u16 | counter u64 | stream_id u64 | route[4] |
```

* `route` lists the DCs the datagram visits, as indices into the sorted list of all DC names,
  origin first (at most `MAX_ROUTE` entries; unused entries are `NO_DC`). `hop` is the index in
  `route` of the relay receiving this datagram; the sender of the hop is `route[hop - 1]`.
* `deliver` has bit `i` set when DC index `i` delivers the datagram locally. A `deliver` DC
  that is not on the route is a branch: the route's last relay sends it a copy over its direct
  link, with the route extended by that DC (docs/relay.md, distribution tree).
* `counter` is the hop sender's per-link counter, the AEAD nonce (with the sender's index) and
  the replay-window sequence.
* The whole header is the AEAD associated data; the body is sealed (docs/multi-dc.md).

`check_route` is what makes loops impossible: a repeated DC, a route longer than `MAX_ROUTE` or a
hop index outside the route is rejected before anything else is looked at. A branch extends the
route by a DC not yet on it and delivers only there, so it cannot continue either.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from pydantic import Field

from shared.contracts.control import ControlMessage
from shared.errors import RelayError

VERSION = 1
HEADER = struct.Struct("!BBBBBHQQ4s")
HEADER_SIZE = HEADER.size  # 27
MAX_ROUTE = 4  # DCs on a route, origin included (3 inter-DC links)
MAX_DCS = 16  # `deliver` is 16 bits wide
NO_DC = 0xFF
TAG_SIZE = 16  # AEAD tag appended by the seal


class Kind(IntEnum):
    RTP = 1  # origin -> destinations, stream_id/layer as in the local wire
    RTCP = 2
    KEYFRAME = 3  # destination -> origin DC, layer = wanted layer
    SUBSCRIBE = 4  # destination -> origin DC, body = WanSubscribe JSON
    PROBE = 5  # one hop, body = probes.ProbeBody (carries the sender's link table)
    PROBE_REPLY = 6  # one hop, body = the probe's echo


MEDIA_KINDS = frozenset({Kind.RTP, Kind.RTCP})
LINK_KINDS = frozenset({Kind.PROBE, Kind.PROBE_REPLY})
_KNOWN_KINDS = frozenset(int(k) for k in Kind)


class WanWireError(RelayError, ValueError):
    """A datagram whose header is malformed or whose route is not allowed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def pack_route(route: tuple[int, ...]) -> bytes:
    check_route(route, 1)
    return bytes(route) + bytes([NO_DC]) * (MAX_ROUTE - len(route))


def check_route(route: tuple[int, ...] | bytes, hop: int) -> None:
    """Raise WanWireError unless `route` is loop-free, short enough and `hop` points into it."""
    if not 2 <= len(route) <= MAX_ROUTE:
        raise WanWireError("route_invalid", f"route of {len(route)} DCs (2..{MAX_ROUTE} allowed)")
    if len(set(route)) != len(route):
        raise WanWireError("route_loop", f"route {list(route)} repeats a DC")
    if not 1 <= hop < len(route):
        raise WanWireError("route_invalid", f"hop {hop} outside route {list(route)}")
    if max(route) >= MAX_DCS:
        raise WanWireError("route_invalid", f"DC index {max(route)} out of range")


def deliver_mask(dcs: tuple[int, ...] | list[int]) -> int:
    mask = 0
    for dc in dcs:
        mask |= 1 << dc
    return mask


class WanHeader:
    """A parsed header (control path and tests; the forwarder unpacks HEADER itself)."""

    __slots__ = ("counter", "deliver", "hop", "kind", "layer", "route", "stream")

    def __init__(self, kind: int, route: tuple[int, ...], hop: int, deliver: int, counter: int,
                 stream: int = 0, layer: int = 0) -> None:
        self.kind, self.route, self.hop, self.deliver = kind, route, hop, deliver
        self.counter, self.stream, self.layer = counter, stream, layer

    def pack(self) -> bytes:
        return HEADER.pack(VERSION, self.kind, len(self.route), self.hop, self.layer, self.deliver, self.counter,
                           self.stream, pack_route(self.route))

    @property
    def sender(self) -> int:
        return self.route[self.hop - 1]

    @property
    def receiver(self) -> int:
        return self.route[self.hop]


def parse_header(datagram: bytes) -> WanHeader:
    """Parse and validate the clear header; WanWireError names the drop reason."""
    if len(datagram) < HEADER_SIZE + TAG_SIZE:
        raise WanWireError("malformed", f"{len(datagram)} bytes is shorter than header and tag")
    version, kind, route_len, hop, layer, deliver, counter, stream, route_bytes = HEADER.unpack_from(datagram)
    if version != VERSION:
        raise WanWireError("malformed", f"version {version}")
    if kind not in _KNOWN_KINDS:
        raise WanWireError("malformed", f"unknown kind {kind}")
    if route_len > MAX_ROUTE:
        raise WanWireError("route_invalid", f"route of {route_len} DCs")
    route = tuple(route_bytes[:route_len])
    check_route(route, hop)
    return WanHeader(kind, route, hop, deliver, counter, stream, layer)


class WanSubscribe(ControlMessage):
    """Destination relay -> origin relay (sealed body of a SUBSCRIBE datagram): keep sending this
    track to my DC for `ttl_s` more seconds (0: stop). The requesting DC is the route's origin."""

    track_sid: str = Field(min_length=1)
    room: str = ""
    project: str = ""
    origin_node: str = Field(min_length=1)
    ttl_s: float = Field(ge=0, le=60)
