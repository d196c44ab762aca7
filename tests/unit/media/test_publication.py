"""PendingTracks: announced tracks matched to the m-lines that publish them, as LiveKit matches."""

from __future__ import annotations

import itertools

from livekit.protocol import models, rtc

from services.media.publication import PendingTracks
from tests.support.media_fakes import published_media


def pending() -> PendingTracks:
    counter = itertools.count(1)
    return PendingTracks(lambda kind: f"TR_{'A' if kind == models.TrackType.AUDIO else 'V'}{next(counter)}")


def audio(cid: str) -> rtc.AddTrackRequest:
    return rtc.AddTrackRequest(cid=cid, type=models.TrackType.AUDIO)


def video(cid: str, *simulcast_cids: str) -> rtc.AddTrackRequest:
    return rtc.AddTrackRequest(cid=cid, type=models.TrackType.VIDEO,
                               simulcast_codecs=[rtc.SimulcastCodec(codec="vp8", cid=c) for c in simulcast_cids])


def test_a_repeated_request_keeps_its_sid_and_an_m_line_publishes_it_once() -> None:
    tracks = pending()
    sid = tracks.announce(audio("mic"))
    assert tracks.announce(audio("mic")) == sid
    [publication] = tracks.match([published_media("mic")], published_cids=set())
    assert (publication.sid, publication.request.cid) == (sid, "mic")
    assert tracks.match([published_media("mic")], published_cids={"mic"}) == []
    assert tracks.requests == {}


def test_matched_by_cid_then_simulcast_codec_cid_then_kind() -> None:
    tracks = pending()
    cam = tracks.announce(video("cam", "cam-vp8"))
    mic = tracks.announce(audio("mic"))
    offered = [published_media("cam-vp8", "video", mid="0"), published_media("browser-own-id", "audio", mid="1")]
    matched = {p.sid: p.media.mid for p in tracks.match(offered, published_cids=set())}
    assert matched == {cam: "0", mic: "1"}


def test_an_m_line_nobody_announced_publishes_nothing() -> None:
    tracks = pending()
    tracks.announce(audio("mic"))
    assert tracks.match([published_media("cam", "video")], published_cids=set()) == []
    assert list(tracks.requests) == ["mic"]  # still waiting for its own m-line
