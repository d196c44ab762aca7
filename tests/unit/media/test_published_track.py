"""PublishedTrack through its ports: keyframe requests and dynacast go to the publisher's
feedback port, never to a publisher of another node; subscriber legs come and go."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable
from dataclasses import dataclass, field

from livekit.protocol import models, rtc

from services.media.rtp import rtcp
from services.media.track import PublishedTrack
from shared.events import TrackWire
from tests.support.media_fakes import FakePeer

SIMULCAST = TrackWire(kind="video", mime_type="video/VP8", clock_rate=90000, payload_types=[96],
                      rids=["q", "h", "f"])


@dataclass
class LocalPublisher:
    sid: str = "PA_pub"
    identity: str = "pub"
    sent: list[rtc.SignalResponse] = field(default_factory=list)
    rtcp: list[bytes] = field(default_factory=list)

    @property
    def is_local(self) -> bool:
        return True

    def allows(self, subscriber: object, track_sid: str) -> bool:
        return True

    def send(self, response: rtc.SignalResponse) -> None:
        self.sent.append(response)

    def send_rtcp(self, packet: bytes) -> None:
        self.rtcp.append(packet)


class Viewer:
    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.identity = sid
        self.closed = False
        self.subscriber = FakePeer("subscriber", sid)
        self.tasks: list[asyncio.Task[object]] = []

    def spawn(self, coro: Awaitable[object], name: str) -> None:
        self.tasks.append(asyncio.ensure_future(coro))


def vp8(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, ssrc) + bytes([0x10, 0x00, 0x00, 0x00])


def track(publisher: LocalPublisher, feedback: LocalPublisher | None) -> PublishedTrack:
    info = models.TrackInfo(sid="TR_v", type=models.TrackType.VIDEO, layers=[
        models.VideoLayer(quality=q, width=320 * (q + 1), height=180 * (q + 1)) for q in range(3)])
    return PublishedTrack(publisher, info, "cam", SIMULCAST, feedback=feedback, project="p", room_name="r",
                          room_sid="RM_1")


def test_keyframe_requests_go_to_the_publisher_through_its_feedback_port() -> None:
    publisher = LocalPublisher()
    local = track(publisher, feedback=publisher)
    local.on_rtp("f", vp8(1, ssrc=0xF00D))
    local.request_keyframe(2)
    [pli] = rtcp.parse_compound(publisher.rtcp[0])
    assert isinstance(pli, rtcp.Pli) and pli.media_ssrc == 0xF00D
    assert local.is_local and local.dynacast is not None


def test_without_a_feedback_port_there_is_no_dynacast_and_no_rtcp_to_send() -> None:
    publisher = LocalPublisher()
    relayed = track(publisher, feedback=None)
    relayed.on_rtp("f", vp8(1, ssrc=0xF00D))
    relayed.request_keyframe(2)
    assert relayed.dynacast is None and publisher.rtcp == [] and publisher.sent == []


async def test_subscriber_legs_are_added_once_and_removed_through_the_subscriber_port() -> None:
    publisher = LocalPublisher()
    local = track(publisher, feedback=publisher)
    viewer = Viewer("PA_view")
    local.add_subscriber(viewer)
    local.add_subscriber(viewer)
    assert list(viewer.subscriber.outgoing) == ["TR_v"] and local.subscribers() == [viewer]
    assert viewer.subscriber.outgoing["TR_v"].stream_id == "PA_pub|TR_v"
    assert local.sent_to(viewer) == (0, 0)
    local.remove_subscriber(viewer)
    await asyncio.gather(*viewer.tasks)
    assert viewer.subscriber.removed == ["TR_v"] and local.subscribers() == [] and local.sent_to(viewer) is None
