"""The media node's periodic work, none of it per packet: usage samples, track telemetry,
speakers and connection quality per room, and a DEBUG view of forwarding."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from .reporting import Reporter
from .room import NodeRoom
from .session import Session

log = logging.getLogger(__name__)

USAGE_INTERVAL = 5.0  # seconds between usage samples
TELEMETRY_INTERVAL = 3.0  # seconds between track analytics samples
ROOM_TICK = 0.5  # speakers every tick, connection quality every fourth


async def usage_loop(reporter: Reporter, sessions: Callable[[], Iterable[Session]]) -> None:
    while True:
        await asyncio.sleep(USAGE_INTERVAL)
        for session in list(sessions()):
            reporter.usage(session)


async def telemetry_loop(reporter: Reporter, rooms: Callable[[], Iterable[NodeRoom]]) -> None:
    while True:
        await asyncio.sleep(TELEMETRY_INTERVAL)
        reporter.telemetry([(room.name, list(room.tracks.values())) for room in list(rooms())])


def tick_room(room: NodeRoom, tick: int, now: float) -> None:
    for track in room.remote.remote_tracks() if room.remote else ():
        track.tick(now)  # follows the layers that arrive; its RTCP has nowhere to go
    room.update_speakers()
    if tick % 4 == 0:
        room.update_quality()


async def room_loop(rooms: Callable[[], Iterable[NodeRoom]]) -> None:
    tick = 0
    while True:
        await asyncio.sleep(ROOM_TICK)
        tick += 1
        now = time.monotonic()
        for room in list(rooms()):
            try:
                tick_room(room, tick, now)
            except Exception:
                log.exception("room %s: periodic update failed", room.name)


async def debug_loop(rooms: Callable[[], Iterable[NodeRoom]], node_log: logging.Logger) -> None:
    """Forwarding state per track every few seconds, at DEBUG level (MESHRTC_LOG_LEVEL=DEBUG)."""
    while True:
        await asyncio.sleep(3)
        if not node_log.isEnabledFor(logging.DEBUG):
            continue
        for room in list(rooms()):
            for track in room.tracks.values():
                subs = [(s.session.identity, s.down.packets_sent if s.down else None,
                         s.down.needs_keyframe if s.down else None, s.down.current_layer if s.down else None,
                         s.down.target_layer if s.down else None) for s in track.subscriptions()]
                node_log.debug("track %s %s in=%d drop=%d rids=%s layers=%s subs=%s", track.sid, track.kind,
                               track.packets_in, track.dropped_in, track.rids, track.layers, subs)
