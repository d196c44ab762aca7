"""MediaPeer against real aiortc RTCPeerConnections on 127.0.0.1, in one process, no mocks.

A stock aiortc "client" publishes synthetic VP8 + Opus to a MediaPeer (publisher role); the
plaintext RTP is rewritten minimally (SSRC, PT, extension ids + MID value) and forwarded through
a MediaPeer in subscriber role to a second stock aiortc client, which decodes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription, VideoStreamTrack, clock
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtcpSrPacket
from av import VideoFrame

from services.media.webrtc import (
    IceConfig,
    MediaPeer,
    MediaPeerError,
    OutgoingTrack,
    PortRangeExhaustedError,
    configure_ice,
    parse_sdp,
    reset_ice,
    rtc_configuration,
)
from services.media.webrtc.rtcp import (
    PSFB,
    PSFB_FIR,
    PSFB_PLI,
    RTCP_SR,
    build_pli,
    feedback_media_ssrcs,
    iter_rtcp,
)
from services.media.webrtc.sdp import MID_URI, MediaSection

pytestmark = pytest.mark.timeout(60)

WIDTH, HEIGHT = 320, 240
SFU_RTCP_SSRC = 0x5F00_0001


@pytest.fixture(autouse=True)
def loopback_ice() -> object:
    configure_ice(IceConfig(host_addresses=("127.0.0.1",)))
    yield
    reset_ice()


# --------------------------------------------------------------------------- media sources


class SyntheticVideo(VideoStreamTrack):
    """Moving bars, 30 fps, encoded to VP8 by the stock aiortc sender."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        image = np.full((HEIGHT, WIDTH, 3), 32, np.uint8)
        x = (self.count * 8) % WIDTH
        image[:, x : x + 40] = (40, 200, 90)
        image[(self.count * 3) % HEIGHT :, :20] = 240
        self.count += 1
        frame = VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


def is_vp8_keyframe(rtp: bytes) -> bool:
    """First packet of a VP8 key frame (RFC 7741 payload descriptor + P bit)."""
    offset = 12 + 4 * (rtp[0] & 0x0F)
    if rtp[0] & 0x10:
        offset += 4 + 4 * int.from_bytes(rtp[offset + 2 : offset + 4], "big")
    descriptor = rtp[offset]
    if not descriptor & 0x10 or descriptor & 0x07:  # not the start of partition 0
        return False
    offset += 1
    if descriptor & 0x80:
        extension = rtp[offset]
        offset += 1
        if extension & 0x80:
            offset += 2 if rtp[offset] & 0x80 else 1
        if extension & 0x40:
            offset += 1
        if extension & 0x30:
            offset += 1
    return not rtp[offset] & 0x01


# --------------------------------------------------------------------------- forwarding helper


def rewrite(packet: bytes, *, ssrc: int, pt: int, id_map: dict[int, int], mid_id: int | None, mid: str) -> bytes:
    """Minimal per-subscriber rewrite: SSRC, payload type, header-extension ids (dropping those
    the subscriber did not negotiate) and the MID value. One-byte extensions only."""
    out = bytearray(packet)
    out[1] = (out[1] & 0x80) | pt
    out[8:12] = ssrc.to_bytes(4, "big")
    if not out[0] & 0x10:
        return bytes(out)
    header = 12 + 4 * (out[0] & 0x0F)
    assert out[header : header + 2] == b"\xbe\xde"
    end = header + 4 + 4 * int.from_bytes(out[header + 2 : header + 4], "big")
    elements = []
    i = header + 4
    while i < end:
        head = out[i]
        if head == 0:
            i += 1
            continue
        ext_id, length = head >> 4, (head & 0x0F) + 1
        if ext_id == 15:
            break
        value = bytes(out[i + 1 : i + 1 + length])
        i += 1 + length
        new_id = id_map.get(ext_id)
        if new_id is None:
            continue
        elements.append((new_id, mid.encode() if new_id == mid_id else value))
    body = b"".join(bytes([(ext_id << 4) | (len(value) - 1)]) + value for ext_id, value in elements)
    body += b"\x00" * (-len(body) % 4)
    if not body:
        out[0] &= ~0x10
        return bytes(out[:header]) + bytes(out[end:])
    block = b"\xbe\xde" + (len(body) // 4).to_bytes(2, "big") + body
    return bytes(out[:header]) + block + bytes(out[end:])


@dataclass
class Leg:
    out: OutgoingTrack
    source_mid: str
    id_map: dict[int, int] = field(default_factory=dict)
    started: bool = False  # video legs start on a key frame


class Forwarder:
    """Forward publisher media by mid to outgoing tracks (test-only SFU core)."""

    def __init__(self, publisher: MediaPeer) -> None:
        self.publisher = publisher
        self.legs: list[Leg] = []
        self.forwarded = 0
        self.plis_up = 0
        publisher.on_rtp_track = self.on_rtp_track

    def attach(self, out: OutgoingTrack, source_mid: str) -> Leg:
        leg = Leg(out, source_mid)
        self.legs.append(leg)
        out.on_rtcp = self.on_feedback
        return leg

    def source(self, mid: str) -> MediaSection:
        return next(m for m in self.publisher.remote_media if m.mid == mid)

    def on_rtp_track(self, mid: str, rid: str, packet: bytes) -> None:
        for leg in self.legs:
            if leg.source_mid != mid or not leg.out.ready:
                continue
            if not leg.started:
                if leg.out.kind == "video" and not is_vp8_keyframe(packet):
                    continue
                leg.started = True
            if not leg.id_map:
                wanted = leg.out.extension_ids
                leg.id_map = {src: wanted[uri] for src, uri in self.source(mid).extmaps.items() if uri in wanted}
            packet_out = rewrite(
                packet,
                ssrc=leg.out.ssrc,
                pt=leg.out.payload_type,
                id_map=leg.id_map,
                mid_id=leg.out.extension_ids.get(MID_URI),
                mid=leg.out.mid,
            )
            if leg.out.send_rtp(packet_out):
                self.forwarded += 1

    def request_keyframe(self) -> None:
        video = next(m for m in self.publisher.remote_media if m.kind == "video")
        for ssrc in video.primary_ssrcs:
            if self.publisher.send_rtcp(build_pli(SFU_RTCP_SSRC, ssrc)):
                self.plis_up += 1

    def on_feedback(self, packet: bytes) -> None:
        if packet[1] == PSFB and packet[0] & 0x1F in (PSFB_PLI, PSFB_FIR):
            self.request_keyframe()


# --------------------------------------------------------------------------- peers


@dataclass
class Publisher:
    client: RTCPeerConnection
    video: RTCRtpSender
    audio: RTCRtpSender
    peer: MediaPeer
    answer: str
    rtp: list[bytes] = field(default_factory=list)
    rtcp: list[bytes] = field(default_factory=list)


async def start_publisher(*, data_channel: bool = False) -> Publisher:
    client = RTCPeerConnection(rtc_configuration())
    video = client.addTrack(SyntheticVideo())
    audio = client.addTrack(AudioStreamTrack())
    if data_channel:
        client.createDataChannel("_reliable")
    await client.setLocalDescription(await client.createOffer())
    peer = MediaPeer("publisher", name="pub")
    rtp: list[bytes] = []
    rtcp: list[bytes] = []
    peer.on_rtp = rtp.append
    peer.on_rtcp = rtcp.append
    answer = await peer.accept_offer(client.localDescription.sdp)
    await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await peer.wait_connected(10)
    return Publisher(client, video, audio, peer, answer, rtp, rtcp)


@dataclass
class SubscriberClient:
    pc: RTCPeerConnection
    frames: dict[str, int] = field(default_factory=dict)  # track id -> decoded frames
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    channels: dict[str, object] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.frames[track.id] = self.frames.get(track.id, 0) + 1
                if track.kind == "video":
                    self.sizes[track.id] = (frame.width, frame.height)

    async def answer(self, offer: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def close(self) -> None:
        await self.pc.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def new_subscriber_client() -> SubscriberClient:
    sub = SubscriberClient(RTCPeerConnection(rtc_configuration()))

    @sub.pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        sub.kinds[track.id] = track.kind
        sub.frames.setdefault(track.id, 0)
        sub.tasks.append(asyncio.ensure_future(sub.consume(track)))

    @sub.pc.on("datachannel")
    def on_datachannel(channel: object) -> None:
        sub.channels[channel.label] = channel  # type: ignore[attr-defined]
        channel.on("message", lambda m: sub.messages.append((channel.label, m)))  # type: ignore[attr-defined]

    return sub


async def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def closing(*closers: object) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for obj in closers:
            await obj.close()  # type: ignore[attr-defined]


def ssrc_of(packet: bytes) -> int:
    return int.from_bytes(packet[8:12], "big")


# --------------------------------------------------------------------------- (a) publisher


async def test_publisher_receives_plaintext_rtp_rtcp_and_pli_reaches_client() -> None:
    pub = await start_publisher()
    async with closing(pub.peer, pub.client):
        offer = parse_sdp(pub.client.localDescription.sdp)
        video_m = next(m for m in offer.media if m.kind == "video")
        audio_m = next(m for m in offer.media if m.kind == "audio")
        vp8_pt = video_m.codec("VP8").payload_type
        opus_pt = audio_m.codec("opus").payload_type
        video_ssrc, audio_ssrc = pub.video._ssrc, pub.audio._ssrc

        # the answer accepts both m-lines recvonly, with candidates embedded
        answer = parse_sdp(pub.answer)
        assert [m.direction for m in answer.media[:2]] == ["recvonly", "recvonly"]
        assert "a=candidate:" in pub.answer and " 127.0.0.1 " in pub.answer

        routes: dict[int, tuple[str, str]] = {}
        pub.peer.on_rtp_track = lambda mid, rid, pkt: routes.setdefault(ssrc_of(pkt), (mid, rid))

        await wait_for(lambda: len({ssrc_of(p) for p in pub.rtp}) == 2, 5, "audio and video RTP")
        await wait_for(lambda: any(pt == RTCP_SR for c in pub.rtcp for pt, _, _ in iter_rtcp(c)), 5, "a sender report")

        assert {ssrc_of(p) for p in pub.rtp} == {video_ssrc, audio_ssrc}
        assert {p[1] & 0x7F for p in pub.rtp if ssrc_of(p) == video_ssrc} == {vp8_pt}
        assert {p[1] & 0x7F for p in pub.rtp if ssrc_of(p) == audio_ssrc} == {opus_pt}
        assert all(p[0] >> 6 == 2 for p in pub.rtp)
        senders = {int.from_bytes(pkt[4:8], "big") for c in pub.rtcp for pt, _, pkt in iter_rtcp(c) if pt == RTCP_SR}
        assert senders & {video_ssrc, audio_ssrc}
        await wait_for(lambda: len(routes) == 2, 2, "demux routes")
        assert routes == {video_ssrc: (video_m.mid, ""), audio_ssrc: (audio_m.mid, "")}
        assert [m.mid for m in pub.peer.incoming_media()] == [video_m.mid, audio_m.mid]

        # PLI from the SFU makes the client's encoder produce a key frame
        keyframe_requests: list[float] = []
        original = pub.video._send_keyframe

        def spy() -> None:
            keyframe_requests.append(time.monotonic())
            original()

        pub.video._send_keyframe = spy  # type: ignore[method-assign]
        await asyncio.sleep(0.3)
        mark = len(pub.rtp)
        assert pub.peer.send_rtcp(build_pli(SFU_RTCP_SSRC, video_ssrc))
        await wait_for(lambda: bool(keyframe_requests), 3, "the client's keyframe request")
        await wait_for(
            lambda: any(ssrc_of(p) == video_ssrc and is_vp8_keyframe(p) for p in pub.rtp[mark:]),
            3,
            "a key frame after PLI",
        )

        # wire counters: SRTP bytes >= plaintext bytes
        assert pub.peer.packets_received >= len(pub.rtp)
        assert pub.peer.bytes_received > sum(map(len, pub.rtp))
        assert pub.peer.bytes_sent > 0 and pub.peer.packets_sent > 0
        assert pub.peer.srtp_errors == 0

        # aiortc's receivers never decode on the SFU side
        assert not [t for t in threading.enumerate() if t.name.endswith("-decoder")]


async def test_publisher_data_channel_roundtrip() -> None:
    client = RTCPeerConnection(rtc_configuration())
    client.addTrack(AudioStreamTrack())
    channel = client.createDataChannel("_reliable")
    got_back: list[bytes] = []
    channel.on("message", got_back.append)
    peer = MediaPeer("publisher")
    received: list[tuple[str, bytes]] = []
    peer.on_data = lambda label, data: received.append((label, data))
    async with closing(peer, client):
        await client.setLocalDescription(await client.createOffer())
        answer = await peer.accept_offer(client.localDescription.sdp)
        await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await wait_for(lambda: channel.readyState == "open", 5, "data channel open")
        channel.send(b"\x01ping")
        await wait_for(lambda: bool(received), 5, "message at the SFU")
        assert received == [("_reliable", b"\x01ping")]
        assert peer.send_data("_reliable", b"\x02pong")
        assert not peer.send_data("_lossy", b"nope")
        await wait_for(lambda: bool(got_back), 5, "reply at the client")
        assert got_back == [b"\x02pong"]


async def test_trickled_candidates_before_and_after_the_offer() -> None:
    client = RTCPeerConnection(rtc_configuration())
    client.addTrack(AudioStreamTrack())
    peer = MediaPeer("publisher")
    async with closing(peer, client):
        await client.setLocalDescription(await client.createOffer())
        lines = client.localDescription.sdp.splitlines()
        candidates = [line[2:] for line in lines if line.startswith("a=candidate:")]
        kept = [line for line in lines if not line.startswith(("a=candidate:", "a=end-of-candidates"))]
        stripped = "\r\n".join(kept) + "\r\n"
        assert candidates
        with pytest.raises(ValueError):
            await peer.add_remote_candidate("candidate:garbage")
        # JS may trickle right after setLocalDescription, before the offer reaches the server
        await peer.add_remote_candidate({"candidate": candidates[0], "sdpMid": "0", "sdpMLineIndex": 0})
        answer = await peer.accept_offer(stripped)
        await peer.add_remote_candidate(None)  # end-of-candidates
        remote = peer._ice_transport().getRemoteCandidates()
        assert [(c.ip, c.port) for c in remote][:1] == [(candidates[0].split()[4], int(candidates[0].split()[5]))]
        await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await peer.wait_connected(10)
        assert not peer.closed


# --------------------------------------------------------------------------- (b) subscriber


async def connect_subscriber(sfu: MediaPeer, client: SubscriberClient) -> str:
    offer = await sfu.create_offer()
    answer = await client.answer(offer)
    await sfu.accept_answer(answer)
    await sfu.wait_connected(10)
    return offer


async def test_subscriber_forwarding_decodes_at_client() -> None:
    pub = await start_publisher()
    sfu = MediaPeer("subscriber", name="sub")
    client = new_subscriber_client()
    forwarder = Forwarder(pub.peer)
    async with closing(sfu, client, pub.peer, pub.client):
        video_mid = next(m.mid for m in pub.peer.incoming_media() if m.kind == "video")
        audio_mid = next(m.mid for m in pub.peer.incoming_media() if m.kind == "audio")
        stream = "PA_alice|TR_VCam"
        video_out = sfu.add_outgoing("video", "TR_VCam", stream, codecs=["VP8"], ssrc=0x11223344)
        audio_out = sfu.add_outgoing("audio", "TR_AMic", "PA_alice|TR_AMic", codecs=["opus"])
        forwarder.attach(video_out, video_mid)
        forwarder.attach(audio_out, audio_mid)
        sfu.create_data_channel("_reliable")
        sfu.create_data_channel("_lossy", ordered=False, max_retransmits=0)
        data_in: list[tuple[str, bytes]] = []
        sfu.on_data = lambda label, data: data_in.append((label, data))

        offer = await connect_subscriber(sfu, client)
        parsed = parse_sdp(offer)
        video_m = parsed.by_mid(video_out.mid)
        assert video_m is not None and video_m.direction == "sendonly"
        assert video_m.msid == (stream, "TR_VCam")
        assert 0x11223344 in video_m.ssrcs and video_m.rtx_ssrcs.get(0x11223344) == video_out.rtx_ssrc
        assert [c.name for c in video_m.media_codecs] == ["VP8"]
        assert parsed.by_mid(audio_out.mid).msid == ("PA_alice|TR_AMic", "TR_AMic")
        assert "rtp-stream-id" not in offer  # never offered to subscribers

        assert video_out.negotiated and audio_out.negotiated
        assert video_out.payload_types == {"vp8": video_out.payload_type}
        assert audio_out.payload_types["opus"] == audio_out.payload_type
        assert MID_URI in video_out.extension_ids

        forwarder.request_keyframe()
        await wait_for(
            lambda: client.frames.get("TR_VCam", 0) >= 10 and client.frames.get("TR_AMic", 0) >= 10,
            15,
            f"decoded frames at the subscriber (got {client.frames})",
        )
        assert client.kinds == {"TR_VCam": "video", "TR_AMic": "audio"}
        assert client.sizes["TR_VCam"] == (WIDTH, HEIGHT)
        assert video_out.packets_sent > 0 and audio_out.packets_sent > 0

        # aiortc's SR task reports the timestamps/counters we feed it
        receiver = next(r for r in client.pc.getReceivers() if r.track and r.track.id == "TR_VCam")
        reports: list[RtcpSrPacket] = []
        original = receiver._handle_rtcp_packet

        async def spy(packet: object) -> None:
            if isinstance(packet, RtcpSrPacket):
                reports.append(packet)
            await original(packet)

        receiver._handle_rtcp_packet = spy  # type: ignore[method-assign]
        ntp = clock.current_ntp_time()
        video_out.sync_sender_report(ntp, 123456)
        await wait_for(lambda: any(r.sender_info.ntp_timestamp == ntp for r in reports), 5, "our SR")
        report = next(r for r in reports if r.sender_info.ntp_timestamp == ntp)
        assert report.ssrc == video_out.ssrc and report.sender_info.rtp_timestamp == 123456
        assert 0 < report.sender_info.packet_count <= video_out.packets_sent
        assert sfu.bytes_sent >= video_out.bytes_sent + audio_out.bytes_sent
        assert sfu.bytes_received > 0  # RTCP RR from the client, STUN, DTLS

        # data channels created by the SFU, in both directions
        await wait_for(lambda: {"_reliable", "_lossy"} <= set(client.channels), 5, "channels at the client")
        await wait_for(lambda: sfu.send_data("_reliable", b"hello"), 5, "channel open")
        await wait_for(lambda: ("_reliable", b"hello") in client.messages, 5, "message at the client")
        client.channels["_lossy"].send(b"from-client")  # type: ignore[attr-defined]
        await wait_for(lambda: ("_lossy", b"from-client") in data_in, 5, "message at the SFU")


# --------------------------------------------------------------------------- (c) renegotiation


async def test_renegotiation_adds_and_removes_tracks_on_live_connection() -> None:
    pub = await start_publisher()
    sfu = MediaPeer("subscriber")
    client = new_subscriber_client()
    forwarder = Forwarder(pub.peer)
    feedback: list[bytes] = []
    async with closing(sfu, client, pub.peer, pub.client):
        video_mid = next(m.mid for m in pub.peer.incoming_media() if m.kind == "video")
        # LiveKit flow: the first subscriber offer carries only the data channels
        sfu.create_data_channel("_reliable")
        sfu.create_data_channel("_lossy", ordered=False, max_retransmits=0)
        offer = await connect_subscriber(sfu, client)
        assert [m.kind for m in parse_sdp(offer).media] == ["application"]

        first = sfu.add_outgoing("video", "TR_first", "PA_a|TR_first", codecs=["VP8"])
        forwarder.attach(first, video_mid)
        await sfu.accept_answer(await client.answer(await sfu.create_offer()))
        assert first.ready
        forwarder.request_keyframe()
        await wait_for(lambda: client.frames.get("TR_first", 0) >= 5, 15, "first track frames")

        # second track on the established connection
        second = sfu.add_outgoing("video", "TR_second", "PA_b|TR_second", codecs=["VP8"])
        forwarder.attach(second, video_mid)
        assert not second.negotiated and not second.send_rtp(b"\x80" + bytes(11))
        offer = await sfu.create_offer()
        assert [m.kind for m in parse_sdp(offer).media] == ["application", "video", "video"]
        await sfu.accept_answer(await client.answer(offer))
        assert second.negotiated and second.mid not in (None, first.mid)
        before = client.frames["TR_first"]
        forwarder.request_keyframe()
        await wait_for(
            lambda: client.frames.get("TR_second", 0) >= 10 and client.frames["TR_first"] >= before + 10,
            15,
            f"both tracks decoding (got {client.frames})",
        )

        # per-track RTCP feedback arrives (receiver reports from the client's receivers)
        second.on_rtcp = feedback.append
        await wait_for(lambda: bool(feedback), 5, "RTCP feedback routed to the second track")
        assert all(
            second.ssrc in feedback_media_ssrcs(pt, fmt, pkt) for pkt in feedback for pt, fmt, _ in iter_rtcp(pkt)
        )

        # removal: m-line goes inactive, sending stops
        await sfu.remove_outgoing(second)
        assert not second.send_rtp(b"\x80" + bytes(11))
        offer = await sfu.create_offer()
        assert parse_sdp(offer).by_mid(second.mid).direction == "inactive"
        await sfu.accept_answer(await client.answer(offer))
        before = client.frames["TR_first"]
        await wait_for(lambda: client.frames["TR_first"] >= before + 5, 10, "first track keeps flowing")


async def test_publisher_renegotiation_adds_a_track() -> None:
    client = RTCPeerConnection(rtc_configuration())
    client.addTrack(AudioStreamTrack())
    client.createDataChannel("_reliable")
    peer = MediaPeer("publisher")
    routes: dict[int, str] = {}
    peer.on_rtp_track = lambda mid, rid, pkt: routes.setdefault(ssrc_of(pkt), mid)
    async with closing(peer, client):
        await client.setLocalDescription(await client.createOffer())
        answer = await peer.accept_offer(client.localDescription.sdp)
        await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await peer.wait_connected(10)
        await wait_for(lambda: len(routes) == 1, 5, "audio")

        video = client.addTrack(SyntheticVideo())
        await client.setLocalDescription(await client.createOffer())
        answer = await peer.accept_offer(client.localDescription.sdp)
        await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        video_mid = next(m.mid for m in peer.incoming_media() if m.kind == "video")
        await wait_for(lambda: video._ssrc in routes, 5, "video after renegotiation")
        assert routes[video._ssrc] == video_mid
        assert not [t for t in threading.enumerate() if t.name.endswith("-decoder")]


# --------------------------------------------------------------------------- (d) simulcast answer

CHROME_SIMULCAST_OFFER = """v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=extmap-allow-mixed
a=msid-semantic: WMS
m=video 9 UDP/TLS/RTP/SAVPF 96 97
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:EsAw
a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y
a=ice-options:trickle
a=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:toffset
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
a=sendonly
a=msid:a8d0f5d2-7f3e-4f0e-9d1e-2b9a6a0c1d11 TR_cid_camera
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 goog-remb
a=rtcp-fb:96 transport-cc
a=rtcp-fb:96 ccm fir
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=rid:q send
a=rid:h send
a=rid:f send
a=simulcast:send q;h;f
m=application 9 UDP/DTLS/SCTP webrtc-datachannel
c=IN IP4 0.0.0.0
a=ice-ufrag:EsAw
a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y
a=ice-options:trickle
a=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F
a=setup:actpass
a=mid:1
a=sctp-port:5000
a=max-message-size:262144
"""


async def test_simulcast_offer_answer_has_rids_and_simulcast() -> None:
    peer = MediaPeer("publisher", close_timeout=2)
    async with closing(peer):
        answer = await peer.accept_offer(CHROME_SIMULCAST_OFFER.replace("\n", "\r\n"))
        video = parse_sdp(answer).by_mid("0")
        assert video is not None and video.direction == "recvonly"
        assert "a=simulcast:recv q;h;f" in answer
        assert [(r.rid, r.direction) for r in video.rids] == [("q", "recv"), ("h", "recv"), ("f", "recv")]
        assert video.simulcast == {"recv": "q;h;f"}
        assert video.extmaps[10] == "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
        assert video.extmaps[11] == "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
        assert video.extmaps[4] == MID_URI
        assert video.codec("VP8").payload_type == 96
        incoming = peer.incoming_media()
        assert [(m.mid, m.track_id, m.send_rids, m.mime_type) for m in incoming] == [
            ("0", "TR_cid_camera", ["q", "h", "f"], "video/VP8")
        ]


# --------------------------------------------------------------------------- (e) close


def open_sockets(peer: MediaPeer) -> list[socket.socket]:
    return [p.transport.get_extra_info("socket") for p in peer._all_protocols()]


async def test_close_half_negotiated_is_bounded_and_leaves_nothing_running() -> None:
    before = asyncio.all_tasks()
    client = RTCPeerConnection(rtc_configuration())
    client.addTrack(SyntheticVideo())
    client.addTrack(AudioStreamTrack())
    await client.setLocalDescription(await client.createOffer())

    # publisher: answered, but the client never applies the answer -> ICE keeps waiting
    publisher = MediaPeer("publisher", close_timeout=2)
    await publisher.accept_offer(client.localDescription.sdp)
    # subscriber: offered, never answered
    subscriber = MediaPeer("subscriber", close_timeout=2)
    subscriber.add_outgoing("video", "TR_x", "PA_x|TR_x")
    subscriber.create_data_channel("_reliable")
    await subscriber.create_offer()
    sockets = open_sockets(publisher) + open_sockets(subscriber)
    assert sockets and all(s.fileno() >= 0 for s in sockets)
    states: list[str] = []
    publisher.on_state(states.append)
    await asyncio.sleep(0.2)  # let the connect tasks start their checks

    started = time.monotonic()
    await asyncio.gather(publisher.close(), publisher.close(), subscriber.close())
    assert time.monotonic() - started < 2.5
    await publisher.close()  # idempotent
    assert publisher.closed and states[-1:] == ["closed"]
    assert all(s.fileno() == -1 for s in sockets)
    with pytest.raises(MediaPeerError):
        await publisher.accept_offer(client.localDescription.sdp)

    await client.close()
    await asyncio.sleep(0)
    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leftover == []


async def test_close_while_connecting_and_when_aiortc_close_wedges() -> None:
    before = asyncio.all_tasks()
    client = RTCPeerConnection(rtc_configuration())
    client.addTrack(SyntheticVideo())
    await client.setLocalDescription(await client.createOffer())
    peer = MediaPeer("publisher", close_timeout=0.5)
    answer = await peer.accept_offer(client.localDescription.sdp)
    await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    sockets = open_sockets(peer)

    async def wedged() -> None:
        await asyncio.sleep(3600)

    # aiortc's close() will hang in RTCIceTransport.stop()
    peer._ice_transport().stop = wedged
    started = time.monotonic()
    await peer.close()  # mid-handshake, with aiortc's close hanging
    assert time.monotonic() - started < 3
    assert peer.closed and peer.connection_state == "closed"
    assert all(s.fileno() == -1 for s in sockets)
    assert not peer.send_rtcp(build_pli(1, 2))
    await client.close()
    await asyncio.sleep(0.05)
    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leftover == []


async def test_operation_deadline_closes_peer() -> None:
    client = RTCPeerConnection(rtc_configuration())
    client.addTrack(AudioStreamTrack())
    await client.setLocalDescription(await client.createOffer())
    peer = MediaPeer("publisher", close_timeout=1)
    original = peer.pc.setRemoteDescription

    async def slow(description: RTCSessionDescription) -> None:
        await asyncio.sleep(5)
        await original(description)

    peer.pc.setRemoteDescription = slow  # type: ignore[method-assign]
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await peer.accept_offer(client.localDescription.sdp, time_limit=0.3)
    assert time.monotonic() - started < 2
    assert peer.closed
    await client.close()


# --------------------------------------------------------------------------- (f) port range


async def test_port_range_applies_to_host_candidates() -> None:
    configure_ice(IceConfig(host_addresses=("127.0.0.1",), port_min=40000, port_max=40010))
    pub = await start_publisher()
    async with closing(pub.peer, pub.client):
        ports = []
        for text in (pub.answer, pub.client.localDescription.sdp):
            for line in text.splitlines():
                if line.startswith("a=candidate:"):
                    bits = line.split()
                    assert bits[4] == "127.0.0.1"
                    ports.append(int(bits[5]))
        assert ports and all(40000 <= port <= 40010 for port in ports)
        await wait_for(lambda: len(pub.rtp) > 5, 5, "media over ranged ports")


async def test_port_range_exhausted_is_a_clear_error() -> None:
    client = RTCPeerConnection(rtc_configuration())
    client.addTrack(AudioStreamTrack())
    await client.setLocalDescription(await client.createOffer())  # ephemeral port
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    configure_ice(IceConfig(host_addresses=("127.0.0.1",), port_min=port, port_max=port))
    peer = MediaPeer("publisher", close_timeout=1)
    try:
        with pytest.raises(MediaPeerError) as info:
            await peer.accept_offer(client.localDescription.sdp)
        cause = info.value.__cause__
        assert isinstance(cause, PortRangeExhaustedError)
        assert f"{port}-{port}" in str(cause)
        assert peer.closed
    finally:
        blocker.close()
        await client.close()


async def test_fast_path_follows_a_later_nomination() -> None:
    """libwebrtc (controlling) may nominate another pair after ICE completed; aioice adopts it and
    so must the cached fast path, or media keeps going to the first pair's address."""
    from aioice.candidate import Candidate
    from aioice.ice import CandidatePair

    pub = await start_publisher()
    async with closing(pub.peer, pub.client):
        connection = pub.peer._ice_transport()._connection
        first = connection._nominated[1]
        assert pub.peer._tx is not None and pub.peer._tx[2] == first.remote_addr
        # a second pair from the same local socket to another (live) client port
        other_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other_socket.bind(("127.0.0.1", 0))
        other_socket.settimeout(5)
        remote = Candidate(foundation="renominated", component=1, transport="udp", priority=1,
                           host="127.0.0.1", port=other_socket.getsockname()[1], type="host")
        pair = CandidatePair(first.protocol, remote)
        pair.state = CandidatePair.State.SUCCEEDED
        pair.nominated = True
        connection.check_complete(pair)
        assert connection._nominated[1] is pair
        assert pub.peer._tx[2] == pair.remote_addr
        assert pub.peer.send_rtcp(bytes.fromhex("80c90001") + b"\x00\x00\x00\x01")  # an empty RR
        data, _ = await asyncio.get_running_loop().run_in_executor(None, other_socket.recvfrom, 2048)
        assert len(data) > 8  # SRTCP: the RR plus index and tag
        other_socket.close()
