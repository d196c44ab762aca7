from __future__ import annotations

from services.media.webrtc.sdp import parse_sdp, strip_inactive_msids

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=inactive\r\n"
    "a=msid:PA_x|TR_a TR_a\r\na=rtpmap:111 opus/48000/2\r\na=ssrc:11 cname:c\r\na=ssrc:11 msid:PA_x|TR_a TR_a\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\n"
    "a=msid:PA_x|TR_a TR_a\r\na=rtpmap:111 opus/48000/2\r\na=ssrc:22 cname:c\r\na=ssrc:22 msid:PA_x|TR_a TR_a\r\n"
)


def test_a_resubscribed_track_has_one_msid() -> None:
    cleaned = strip_inactive_msids(OFFER)
    media = parse_sdp(cleaned).media
    assert media[0].msid is None and media[0].direction == "inactive"
    assert media[1].msid == ("PA_x|TR_a", "TR_a")
    assert cleaned.count("msid:PA_x|TR_a TR_a") == 2  # both on the live section
    assert "a=ssrc:11 cname:c" in cleaned  # the rest of the dead section is untouched
