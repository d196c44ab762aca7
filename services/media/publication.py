"""Tracks a client announced (AddTrackRequest) and the m-lines of its offers that publish them.

A LiveKit client first asks to publish (AddTrackRequest with a client id, `cid`), gets the
track's sid back, then sends an offer whose m-line carries the cid as msid track id. The track
is published once an answered offer carries it. Matching is done as LiveKit does it: by cid,
then by the cid of one of the request's simulcast codecs, then (clients that put their own ids
in msid) by the first pending request of the same kind. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from livekit.protocol import models, rtc

from .webrtc.sdp import MediaSection


@dataclass(frozen=True)
class Publication:
    sid: str
    request: rtc.AddTrackRequest
    media: MediaSection


class PendingTracks:
    def __init__(self, new_sid: Callable[[int], str]) -> None:
        self._new_sid = new_sid
        self.requests: dict[str, rtc.AddTrackRequest] = {}  # cid -> request, until its m-line arrives
        self.sids: dict[str, str] = {}  # cid -> the sid it was given (a repeated request keeps it)

    def announce(self, request: rtc.AddTrackRequest) -> str:
        """The sid of the track the client asks to publish (the same for a repeated request)."""
        sid = self.sids.get(request.cid) or self._new_sid(request.type)
        self.sids[request.cid] = sid
        self.requests[request.cid] = request
        return sid

    def match(self, offered: Iterable[MediaSection], published_cids: set[str]) -> list[Publication]:
        """The announced tracks that these m-lines publish (each taken off the pending list)."""
        published = set(published_cids)
        out: list[Publication] = []
        for media in offered:
            if media.track_id in published:
                continue
            request = self.requests.get(media.track_id)
            if request is None:
                request = next((r for r in self.requests.values()
                                if any(c.cid == media.track_id for c in r.simulcast_codecs)), None)
            if request is None:
                request = next((r for r in self.requests.values()
                                if (r.type == models.TrackType.AUDIO) == (media.kind == "audio")
                                and r.cid not in published), None)
            if request is None:
                continue
            del self.requests[request.cid]
            published.add(request.cid)
            out.append(Publication(self.sids[request.cid], request, media))
        return out
