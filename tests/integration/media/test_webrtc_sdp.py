"""SDP parsing and publisher-answer munging on hand-written Chrome and libwebrtc (Rust SDK) offers,
both on canned answers and through a real aiortc answer (MediaPeer.accept_offer)."""

from __future__ import annotations

import pytest
from aiortc.codecs import HEADER_EXTENSIONS

from services.media.webrtc import IceConfig, MediaPeer, configure_ice, reset_ice
from services.media.webrtc.sdp import (
    MID_URI,
    REPAIRED_RID_URI,
    RID_URI,
    TRANSPORT_CC_URI,
    munge_publisher_answer,
    parse_sdp,
    remove_extmaps,
)

FINGERPRINT = (
    "a=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:"
    "2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F"
)


def crlf(text: str) -> str:
    return text.strip("\n").replace("\n", "\r\n") + "\r\n"


# Chrome 13x publishing with livekit-client: opus mic (mid 0), VP8 camera with rid simulcast
# (mid 1), data channels (mid 2). Chrome sends no a=ssrc lines for rid simulcast.
CHROME_OFFER = crlf(f"""
v=0
o=- 8097385116522347285 3 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1 2
a=extmap-allow-mixed
a=msid-semantic: WMS 5f2a0c1e-0d0b-4a47-b7a3-3c0b6c9f2d10
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:t8Qe
a=ice-pwd:5pL7kW3i0nYtR0h2T1cJr5Xz
a=ice-options:trickle
{FINGERPRINT}
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=sendonly
a=msid:5f2a0c1e-0d0b-4a47-b7a3-3c0b6c9f2d10 TR_cid_mic
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
a=ssrc:1001 cname:Qp0yOe2Ch1Yj8mVf
a=ssrc:1001 msid:5f2a0c1e-0d0b-4a47-b7a3-3c0b6c9f2d10 TR_cid_mic
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 45 46
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:t8Qe
a=ice-pwd:5pL7kW3i0nYtR0h2T1cJr5Xz
a=ice-options:trickle
{FINGERPRINT}
a=setup:actpass
a=mid:1
a=extmap:14 urn:ietf:params:rtp-hdrext:toffset
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:13 urn:3gpp:video-orientation
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
a=sendonly
a=msid:5f2a0c1e-0d0b-4a47-b7a3-3c0b6c9f2d10 TR_cid_cam
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
a=rtpmap:102 H264/90000
a=rtcp-fb:102 nack pli
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f
a=rtpmap:103 rtx/90000
a=fmtp:103 apt=102
a=rtpmap:45 AV1/90000
a=fmtp:45 level-idx=5;profile=0;tier=0
a=rtpmap:46 rtx/90000
a=fmtp:46 apt=45
a=rid:q send
a=rid:h send
a=rid:f send
a=simulcast:send q;h;f
m=application 9 UDP/DTLS/SCTP webrtc-datachannel
c=IN IP4 0.0.0.0
a=ice-ufrag:t8Qe
a=ice-pwd:5pL7kW3i0nYtR0h2T1cJr5Xz
a=ice-options:trickle
{FINGERPRINT}
a=setup:actpass
a=mid:2
a=sctp-port:5000
a=max-message-size:262144
""")

# aiortc's answer to CHROME_OFFER before munging (as produced by aiortc 1.16 with the RID URIs
# registered): no rid/simulcast lines.
AIORTC_ANSWER = crlf("""
v=0
o=- 3925012345 3925012345 IN IP4 0.0.0.0
s=-
t=0 0
a=group:BUNDLE 0 1 2
a=msid-semantic:WMS *
m=audio 50000 UDP/TLS/RTP/SAVPF 111 9 0 8
c=IN IP4 127.0.0.1
a=recvonly
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=mid:0
a=msid:0a1b 0c2d
a=rtcp:9 IN IP4 0.0.0.0
a=rtcp-mux
a=ssrc:424242 cname:aiortc
a=rtpmap:111 opus/48000/2
a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host
a=end-of-candidates
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuv
a=setup:active
m=video 50000 UDP/TLS/RTP/SAVPF 96 97
c=IN IP4 127.0.0.1
a=recvonly
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
a=mid:1
a=msid:0a1b 0e3f
a=rtcp:9 IN IP4 0.0.0.0
a=rtcp-mux
a=ssrc-group:FID 515151 616161
a=ssrc:515151 cname:aiortc
a=ssrc:616161 cname:aiortc
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=rtcp-fb:96 goog-remb
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host
a=end-of-candidates
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuv
a=setup:active
m=application 50000 UDP/DTLS/SCTP webrtc-datachannel
c=IN IP4 127.0.0.1
a=mid:2
a=sctp-port:5000
a=max-message-size:65536
a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host
a=end-of-candidates
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuv
a=setup:active
""")


def _recv_section(kind: str, mid: str, pts: str, codec_lines: str, ext: str) -> str:
    return f"""m={kind} 9 UDP/TLS/RTP/SAVPF {pts}
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:Rw3s
a=ice-pwd:Qm1b9bTq0s1HnC5lJkqv2Oyd
a=ice-options:trickle
{FINGERPRINT}
a=setup:actpass
a=mid:{mid}
{ext}
a=recvonly
a=rtcp-mux
{codec_lines}
"""


_AUDIO_CODECS = "a=rtpmap:111 opus/48000/2\na=rtcp-fb:111 transport-cc\na=fmtp:111 minptime=10;useinbandfec=1"
_VIDEO_CODECS = (
    "a=rtpmap:96 VP8/90000\na=rtcp-fb:96 nack\na=rtcp-fb:96 nack pli\na=rtpmap:97 rtx/90000\na=fmtp:97 apt=96"
)
_AUDIO_EXT = "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid"
_VIDEO_EXT = (
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\n"
    "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\n"
    "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
)

# libwebrtc (LiveKit Rust SDK 1.2.1) after the v1 -> v0 fallback: 3 audio + 3 video recvonly
# transceivers (mids 7-12), data channels (13), then a published simulcast camera with no
# stream id (mid 14) and a microphone with signalled SSRC (mid 15).
RUST_OFFER = crlf(
    """
v=0
o=- 1234567890123456789 4 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 7 8 9 10 11 12 13 14 15
a=extmap-allow-mixed
a=msid-semantic: WMS
"""
    + "".join(_recv_section("audio", str(m), "111", _AUDIO_CODECS, _AUDIO_EXT) for m in (7, 8, 9))
    + "".join(_recv_section("video", str(m), "96 97", _VIDEO_CODECS, _VIDEO_EXT) for m in (10, 11, 12))
    + f"""m=application 9 UDP/DTLS/SCTP webrtc-datachannel
c=IN IP4 0.0.0.0
a=ice-ufrag:Rw3s
a=ice-pwd:Qm1b9bTq0s1HnC5lJkqv2Oyd
a=ice-options:trickle
{FINGERPRINT}
a=setup:actpass
a=mid:13
a=sctp-port:5000
a=max-message-size:262144
m=video 9 UDP/TLS/RTP/SAVPF 96 97
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:Rw3s
a=ice-pwd:Qm1b9bTq0s1HnC5lJkqv2Oyd
a=ice-options:trickle
{FINGERPRINT}
a=setup:actpass
a=mid:14
{_VIDEO_EXT}
a=extmap:3 {TRANSPORT_CC_URI}
a=sendonly
a=msid:- TR_rust_cam
a=rtcp-mux
a=rtcp-rsize
{_VIDEO_CODECS}
a=rid:q send
a=rid:h send
a=simulcast:send q;h
m=audio 9 UDP/TLS/RTP/SAVPF 111
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:Rw3s
a=ice-pwd:Qm1b9bTq0s1HnC5lJkqv2Oyd
a=ice-options:trickle
{FINGERPRINT}
a=setup:actpass
a=mid:15
{_AUDIO_EXT}
a=sendonly
a=msid:- TR_rust_mic
a=rtcp-mux
{_AUDIO_CODECS}
a=ssrc:777 cname:rustcname
a=ssrc:777 msid:- TR_rust_mic
"""
)

# libwebrtc without simulcast: VP8 + RTX with a FID group.
LIBWEBRTC_FID_SECTION = crlf("""
v=0
o=- 1 2 IN IP4 127.0.0.1
s=-
t=0 0
m=video 9 UDP/TLS/RTP/SAVPF 96 97
a=mid:v
a=sendrecv
a=msid:stream-1 track-1
a=rtpmap:96 VP8/90000
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=ssrc-group:FID 3000 3001
a=ssrc:3000 cname:c
a=ssrc:3000 msid:stream-1 track-1
a=ssrc:3001 cname:c
a=ssrc:3001 msid:stream-1 track-1
""")


@pytest.fixture(autouse=True)
def loopback_ice() -> object:
    configure_ice(IceConfig(host_addresses=("127.0.0.1",)))
    yield
    reset_ice()


def test_rid_extensions_registered_with_aiortc() -> None:
    uris = [ext.uri for ext in HEADER_EXTENSIONS["video"]]
    assert RID_URI in uris and REPAIRED_RID_URI in uris
    assert len({ext.id for ext in HEADER_EXTENSIONS["video"]}) == len(uris)


def test_parse_chrome_offer() -> None:
    parsed = parse_sdp(CHROME_OFFER)
    assert parsed.bundle == ["0", "1", "2"]
    assert parsed.ice_ufrag == "t8Qe"
    audio, video, data = parsed.media
    assert (audio.kind, audio.mid, audio.direction) == ("audio", "0", "sendonly")
    assert audio.msid == ("5f2a0c1e-0d0b-4a47-b7a3-3c0b6c9f2d10", "TR_cid_mic")
    assert audio.ssrcs == {
        1001: {"cname": "Qp0yOe2Ch1Yj8mVf", "msid": "5f2a0c1e-0d0b-4a47-b7a3-3c0b6c9f2d10 TR_cid_mic"}
    }
    opus = audio.codec("opus")
    assert opus is not None and (opus.payload_type, opus.clock_rate, opus.channels) == (111, 48000, 2)
    assert opus.fmtp == {"minptime": "10", "useinbandfec": "1", "usedtx": "1"}
    assert opus.rtcp_fb == ["transport-cc"]
    assert audio.extension_id(MID_URI) == 4

    assert (video.kind, video.mid, video.track_id) == ("video", "1", "TR_cid_cam")
    assert video.send_rids == ["q", "h", "f"] and video.is_simulcast_send
    assert video.simulcast == {"send": "q;h;f"}
    assert video.ssrcs == {}
    assert video.extmaps[10] == RID_URI and video.extmaps[11] == REPAIRED_RID_URI
    assert video.rtx_payload_types == {96: 97, 102: 103, 45: 46}
    assert video.codec("rtx").apt == 96
    assert [c.name for c in video.media_codecs] == ["VP8", "H264", "AV1"]
    assert video.mime_type == "video/VP8"
    assert video.codec("H264").fmtp["profile-level-id"] == "42e01f"

    assert (data.kind, data.mid, data.sctp_port, data.max_message_size) == ("application", "2", 5000, 262144)


def test_parse_libwebrtc_fid_group() -> None:
    (video,) = parse_sdp(LIBWEBRTC_FID_SECTION).media
    assert video.ssrc_groups == [("FID", [3000, 3001])]
    assert video.rtx_ssrcs == {3000: 3001}
    assert video.primary_ssrcs == [3000]
    assert video.msid == ("stream-1", "track-1")
    assert video.sends and not video.is_simulcast_send


def test_munge_chrome_answer_adds_simulcast() -> None:
    munged = munge_publisher_answer(CHROME_OFFER, AIORTC_ANSWER)
    audio, video, _data = parse_sdp(munged).media
    assert [(r.rid, r.direction) for r in video.rids] == [("q", "recv"), ("h", "recv"), ("f", "recv")]
    assert video.simulcast == {"recv": "q;h;f"}
    assert video.direction == "recvonly"
    assert audio.rids == [] and audio.simulcast == {}
    # everything else is untouched and in order
    untouched = [line for line in munged.splitlines() if not line.startswith(("a=rid:", "a=simulcast:"))]
    assert untouched == AIORTC_ANSWER.splitlines()
    # rid lines go before the candidates
    lines = munged.splitlines()
    assert lines.index("a=simulcast:recv q;h;f") < lines.index(
        "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host", lines.index("a=mid:1")
    )
    assert munged.endswith("\r\n") and "\r\n\r\n" not in munged
    assert munge_publisher_answer(CHROME_OFFER, munged) == munged  # idempotent


def test_munge_adds_missing_rid_extmaps() -> None:
    answer = remove_extmaps(AIORTC_ANSWER, [RID_URI, REPAIRED_RID_URI])
    assert RID_URI not in answer
    video = parse_sdp(munge_publisher_answer(CHROME_OFFER, answer)).by_mid("1")
    assert video is not None
    assert video.extmaps[10] == RID_URI and video.extmaps[11] == REPAIRED_RID_URI


async def test_rust_offer_through_aiortc() -> None:
    peer = MediaPeer("publisher", close_timeout=2)
    try:
        answer = await peer.accept_offer(RUST_OFFER)
    finally:
        await peer.close()
    parsed = parse_sdp(answer)
    assert [m.mid for m in parsed.media] == [str(i) for i in range(7, 16)]
    assert parsed.bundle == [str(i) for i in range(7, 16)]
    for mid in ("7", "8", "9", "10", "11", "12"):
        section = parsed.by_mid(mid)
        assert section is not None and section.direction == "inactive" and section.msid is None
    camera = parsed.by_mid("14")
    assert camera is not None and camera.direction == "recvonly"
    assert [(r.rid, r.direction) for r in camera.rids] == [("q", "recv"), ("h", "recv")]
    assert camera.simulcast == {"recv": "q;h"}
    assert {camera.extmaps.get(10), camera.extmaps.get(11), camera.extmaps.get(4)} == {
        RID_URI,
        REPAIRED_RID_URI,
        MID_URI,
    }
    assert TRANSPORT_CC_URI not in camera.extmaps.values()  # aiortc has no TWCC
    mic = parsed.by_mid("15")
    assert mic is not None and mic.direction == "recvonly" and mic.rids == []
    assert parsed.by_mid("13").kind == "application"
    incoming = {m.mid: m for m in peer.incoming_media()}
    assert set(incoming) == {"14", "15"}
    assert incoming["14"].msid == ("-", "TR_rust_cam") and incoming["14"].send_rids == ["q", "h"]
    assert incoming["15"].ssrcs[777]["cname"] == "rustcname"


async def test_chrome_offer_through_aiortc() -> None:
    peer = MediaPeer("publisher", close_timeout=2)
    try:
        answer = await peer.accept_offer(CHROME_OFFER)
    finally:
        await peer.close()
    audio, video, data = parse_sdp(answer).media
    assert (audio.mid, audio.direction, audio.codec("opus").payload_type) == ("0", "recvonly", 111)
    assert (video.mid, video.direction, video.codec("VP8").payload_type) == ("1", "recvonly", 96)
    assert video.simulcast == {"recv": "q;h;f"} and len(video.rids) == 3
    assert data.kind == "application" and data.sctp_port == 5000
    assert "a=setup:active" in answer and "a=candidate:" in answer


def test_remove_extmaps_keeps_other_lines() -> None:
    stripped = remove_extmaps(CHROME_OFFER, [RID_URI])
    assert RID_URI not in stripped and REPAIRED_RID_URI in stripped
    assert len(stripped.splitlines()) == len(CHROME_OFFER.splitlines()) - 1
