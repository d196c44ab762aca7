"""Soft state of who wants which track through this relay. Pure: times are passed in.

* Local subscribers: media nodes of this DC (`deliver_to` address) that asked for a track with
  `RelaySubscribe`; each entry lapses `ttl_s` after its last repeat, `ttl_s = 0` removes it.
* Remote destinations (origin relay only): DCs whose relay sent a WAN SUBSCRIBE for a track
  published in this DC; same lapse rule.

A stream with neither is forgotten. Every change returns whether the stream's targets (or what
the track is: its node, room) changed, so the caller rebuilds the forwarder's state only then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

Addr = tuple[str, int]
K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class TrackRef:
    track_sid: str
    room: str
    project: str
    origin_dc: str
    origin_node: str


@dataclass
class Interest:
    ref: TrackRef
    local: dict[Addr, float] = field(default_factory=dict)  # subscriber node -> expires at
    remote: dict[str, float] = field(default_factory=dict)  # destination DC -> expires at

    @property
    def empty(self) -> bool:
        return not self.local and not self.remote


def _drop_lapsed(entries: dict[K, float], now: float) -> bool:
    """Remove the entries expired by `now`; True if any was."""
    lapsed = [key for key, expires in entries.items() if expires <= now]
    for key in lapsed:
        del entries[key]
    return bool(lapsed)


class Subscriptions:
    def __init__(self) -> None:
        self.interests: dict[int, Interest] = {}

    def _update(self, stream: int, ref: TrackRef, table: str, key: object, ttl_s: float, now: float) -> bool:
        interest = self.interests.get(stream)
        if interest is None:
            if ttl_s <= 0:
                return False
            interest = self.interests[stream] = Interest(ref)
        moved = ttl_s > 0 and interest.ref != ref  # e.g. the publisher resumed on another node
        if moved:
            interest.ref = ref
        entries: dict = getattr(interest, table)
        existed = key in entries
        if ttl_s <= 0:
            entries.pop(key, None)
        else:
            entries[key] = now + ttl_s
        if interest.empty:
            del self.interests[stream]
        return moved or existed != (ttl_s > 0)

    def add_local(self, stream: int, ref: TrackRef, subscriber: Addr, ttl_s: float, now: float) -> bool:
        """Subscribe (or refresh, or with ttl 0 end) a local node; True when the targets changed."""
        return self._update(stream, ref, "local", subscriber, ttl_s, now)

    def add_remote(self, stream: int, ref: TrackRef, dc: str, ttl_s: float, now: float) -> bool:
        """A destination DC's WAN SUBSCRIBE; True when the set of destination DCs changed."""
        return self._update(stream, ref, "remote", dc, ttl_s, now)

    def expire(self, now: float) -> set[int]:
        """Drop lapsed entries; returns the streams whose targets changed (some may be gone)."""
        changed: set[int] = set()
        for stream, interest in list(self.interests.items()):
            # `|`, not `or`: both tables are swept even when the first had lapsed entries.
            if _drop_lapsed(interest.local, now) | _drop_lapsed(interest.remote, now):
                changed.add(stream)
            if interest.empty:
                del self.interests[stream]
        return changed

    def get(self, stream: int) -> Interest | None:
        return self.interests.get(stream)

    @property
    def local_count(self) -> int:
        return sum(len(interest.local) for interest in self.interests.values())
