"""The local relay wire: media node <-> relay of the same DC (plain UDP inside one DC).

```
0      1              9       10
| type | stream_id u64 | layer | payload…
```

Both ends name a track by `stream_id(track_sid)`, a 64-bit hash, so no table is exchanged.
Layout and types are fixed by docs/multi-dc.md.
"""

from __future__ import annotations

import hashlib
import struct
from enum import IntEnum

from shared.errors import ContractError

LOCAL_HEADER = struct.Struct("!BQB")
LOCAL_HEADER_SIZE = LOCAL_HEADER.size  # 10
NOT_SIMULCAST = 255  # `layer` of a track without simulcast layers


class LocalType(IntEnum):
    RTP = 1  # media -> relay (export), relay -> media (delivery)
    RTCP = 2  # same directions as RTP: the publisher's sender reports
    KEYFRAME = 3  # subscriber side -> relay -> publisher side; empty payload, layer = wanted layer


class LocalWireError(ContractError, ValueError):
    """A datagram that is not a valid local relay datagram."""


def stream_id(track_sid: str) -> int:
    """The wire identity of a track: the first 8 bytes of blake2b(track_sid), big-endian."""
    return int.from_bytes(hashlib.blake2b(track_sid.encode("utf-8"), digest_size=8).digest(), "big")


def encode_local(kind: LocalType | int, stream: int, layer: int, payload: bytes = b"") -> bytes:
    return LOCAL_HEADER.pack(kind, stream, layer) + payload


def parse_local(datagram: bytes) -> tuple[LocalType, int, int, bytes]:
    """(type, stream_id, layer, payload); LocalWireError for a short datagram or an unknown type."""
    if len(datagram) < LOCAL_HEADER_SIZE:
        raise LocalWireError(f"local relay datagram of {len(datagram)} bytes is shorter than its header")
    kind, stream, layer = LOCAL_HEADER.unpack_from(datagram)
    if kind not in _KNOWN:
        raise LocalWireError(f"unknown local relay datagram type {kind}")
    return LocalType(kind), stream, layer, datagram[LOCAL_HEADER_SIZE:]


_KNOWN = frozenset(int(t) for t in LocalType)
