"""Sender Reports of every outgoing track in the process, from one timer.

aiortc runs an RTCP task per ``RTCRtpSender`` (SR + SDES every 0.5-1.5 s, each an await chain
and an aiortc packet object graph): at 50 subscribers x 2 tracks that is 100 wake-ups a second
for a few bytes each. Outgoing tracks of a :class:`~.peer.MediaPeer` silence that task
(``aiortc_compat.quiet_sender_rtcp``) and one :class:`SenderReportClock` per event loop
asks each connected peer, once per :data:`INTERVAL`, to send one compound SR for all its tracks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

__all__ = ["INTERVAL", "SenderReportClock"]

logger = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds; RFC 3550's average for a stream this size, as aiortc's 0.5-1.5 s


class _Reporter(Protocol):
    def send_sender_reports(self) -> None: ...


class SenderReportClock:
    """The timer of one event loop; peers register while they can send."""

    _clocks: dict[asyncio.AbstractEventLoop, SenderReportClock] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._peers: dict[int, _Reporter] = {}  # insertion-ordered, by id (peers are not hashable by value)
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def current(cls) -> SenderReportClock:
        loop = asyncio.get_running_loop()
        clock = cls._clocks.get(loop)
        if clock is None:
            for old in [old for old in cls._clocks if old.is_closed()]:
                del cls._clocks[old]
            clock = cls._clocks[loop] = cls(loop)
        return clock

    def __len__(self) -> int:
        return len(self._peers)

    def add(self, peer: _Reporter) -> None:
        self._peers[id(peer)] = peer
        if self._handle is None:
            self._handle = self._loop.call_later(INTERVAL, self._tick)

    def discard(self, peer: _Reporter) -> None:
        self._peers.pop(id(peer), None)
        if not self._peers and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self._handle = None
        for peer in list(self._peers.values()):
            try:
                peer.send_sender_reports()
            except Exception:  # one broken peer must not stop the others' reports
                logger.exception("sender reports of %r failed", peer)
        if self._peers:
            self._handle = self._loop.call_later(INTERVAL, self._tick)

