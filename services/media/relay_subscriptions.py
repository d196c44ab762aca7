"""The relay subscriptions of remote tracks that local sessions watch.

Soft state: while a remote track has local subscribers, the node asks its DC's relay to send
it here every RELAY_REFRESH seconds (ttl RELAY_TTL), and once with ttl 0 when nobody watches
any more. A first subscriber does not wait for the next round (`wake`). A relay that does not
answer is an outage to report and retry, never a crash of the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from shared.contracts.relay import RelaySubscribe, RelaySubscribed, parse_hostport

from .relay_link import RelayLink
from .remote import RemoteTrack

log = logging.getLogger(__name__)

RELAY_REFRESH = 1.0  # seconds between soft-state refreshes of relay subscriptions
RELAY_TTL = 5.0  # a subscription the relay hears nothing of for this long lapses

RelayRequest = Callable[[bytes, float], Awaitable[bytes]]  # (RelaySubscribe, timeout) -> RelaySubscribed


class RelaySubscriptions:
    def __init__(self, link: RelayLink, node_id: str, request: RelayRequest,
                 remote_tracks: Callable[[], Iterable[RemoteTrack]]) -> None:
        self.link = link
        self.node_id = node_id
        self._request = request
        self._remote_tracks = remote_tracks
        self._wake = asyncio.Event()
        self._subscribed: dict[str, RemoteTrack] = {}

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        last_refresh = 0.0
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RELAY_REFRESH)
            self._wake.clear()
            now = time.monotonic()
            due = now - last_refresh >= RELAY_REFRESH
            if due:
                last_refresh = now
            try:
                await self.refresh(now, due)
            except Exception:  # one bad round must not end the refreshes (subscriptions would lapse)
                log.exception("relay subscription refresh failed")

    async def refresh(self, now: float, due: bool) -> None:
        self.link.sweep(now)
        calls = []
        for track in list(self._remote_tracks()):
            if track.wanted and (due or not track.relay_subscribed):
                self._subscribed[track.sid] = track
                calls.append(self._subscribe(track, RELAY_TTL))
        for sid, track in list(self._subscribed.items()):
            if not track.wanted:
                del self._subscribed[sid]
                calls.append(self._subscribe(track, 0))
        if calls:
            await asyncio.gather(*calls)

    async def _subscribe(self, track: RemoteTrack, ttl_s: float) -> None:
        request = RelaySubscribe(room=track.room_name, project=track.project, track_sid=track.sid,
                                 origin_dc=track.origin_dc, origin_node=track.origin_node,
                                 subscriber_node=self.node_id, deliver_to=self.link.address_text, ttl_s=ttl_s)
        try:
            answer = RelaySubscribed.decode(await self._request(request.encode(), RELAY_REFRESH))
            relay = parse_hostport(answer.relay_local)
        except Exception as exc:  # no relay answering is an outage to report, not a crash
            log.warning("relay subscribe for track %s failed: %r", track.sid, exc)
            track.relay_subscribed = False
            return
        track.relay_subscribed = ttl_s > 0
        track.relay = relay
