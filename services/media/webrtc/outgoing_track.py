"""The sending half of a subscriber PeerConnection: one :class:`OutgoingTrack` per sendonly
m-line, whose packets skip aiortc's RTP sender (:class:`NullTrack` keeps it asleep) and go out
through the peer's SRTP send path (fast_path.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from aiortc import RTCRtpSender
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

from . import aiortc_compat, srtp

__all__ = ["NullTrack", "OutgoingTrack", "ScratchSender", "codec_preferences"]

RtpCallback = Callable[[bytes], None]


class ScratchSender(Protocol):
    """The peer's send path as an outgoing track uses it (fast_path.FastPath)."""

    _tx: tuple[Any, ...] | None

    def _send_scratch(self, protect: Any, length: int) -> int: ...


class NullTrack(MediaStreamTrack):
    """A track whose ``recv()`` never returns, so aiortc's ``RTCRtpSender._run_rtp`` sleeps
    instead of polling (it polls every 20 ms with no track). Its id becomes the msid track id."""

    def __init__(self, kind: str, track_id: str) -> None:
        super().__init__()
        self.kind = kind
        aiortc_compat.set_track_id(self, track_id)

    async def recv(self) -> Any:
        await asyncio.get_running_loop().create_future()  # cancelled by RTCRtpSender.stop()
        raise MediaStreamError  # pragma: no cover


class OutgoingTrack:
    """One sendonly m-line of a subscriber PeerConnection.

    Negotiated values (valid once :attr:`negotiated`): :attr:`mid`, :attr:`ssrc`,
    :attr:`rtx_ssrc`, :attr:`payload_type`, :attr:`payload_types`, :attr:`rtx_payload_types`,
    :attr:`extension_ids`. Rewrite forwarded packets to those, then :meth:`send_rtp`.
    """

    def __init__(
        self, peer: ScratchSender, transceiver: RTCRtpTransceiver, kind: str, track_id: str, stream_id: str
    ) -> None:
        self._peer = peer
        self.transceiver = transceiver
        self.kind = kind
        self.track_id = track_id
        self.stream_id = stream_id
        self.removed = False
        self._active = False  # negotiated and not removed; checked on the send fast path
        #: RTCP from the subscriber about this track (PLI, FIR, NACK, RR report block, REMB),
        #: one plaintext RTCP packet (not the whole compound) per call.
        self.on_rtcp: RtpCallback | None = None
        self.packets_sent = 0
        self.bytes_sent = 0  # SRTP bytes on the wire
        self.plaintext_bytes_sent = 0
        self.sender_report_time: tuple[int, int] | None = None  # (ntp, rtp timestamp)

    def __repr__(self) -> str:
        return f"OutgoingTrack({self.kind} {self.track_id} mid={self.mid} ssrc={self.ssrc})"

    # -- negotiated values

    @property
    def mid(self) -> str | None:
        return self.transceiver.mid

    @property
    def ssrc(self) -> int:
        return aiortc_compat.sender_ssrcs(self.transceiver.sender)[0]

    @property
    def rtx_ssrc(self) -> int | None:
        """The RTX SSRC announced in the ``FID`` group, if RTX was negotiated."""
        if any(is_rtx(c) for c in aiortc_compat.negotiated_codecs(self.transceiver)):
            return aiortc_compat.sender_ssrcs(self.transceiver.sender)[1]
        return None

    @property
    def negotiated(self) -> bool:
        """The answer has been applied and this m-line sends."""
        return self._active

    @property
    def ready(self) -> bool:
        """Negotiated and the transport is connected: :meth:`send_rtp` will put it on the wire."""
        return self.negotiated and self._peer._tx is not None

    @property
    def codecs(self) -> list[RTCRtpCodecParameters]:
        return aiortc_compat.negotiated_codecs(self.transceiver)

    @property
    def payload_type(self) -> int | None:
        """Payload type of the preferred (first) negotiated codec."""
        return next((c.payloadType for c in aiortc_compat.negotiated_codecs(self.transceiver) if not is_rtx(c)), None)

    @property
    def payload_types(self) -> dict[str, int]:
        """Codec name (lower case, e.g. ``"vp8"``, ``"opus"``) -> payload type (first match)."""
        out: dict[str, int] = {}
        for codec in aiortc_compat.negotiated_codecs(self.transceiver):
            if not is_rtx(codec) and codec.payloadType is not None:  # always set once negotiated
                out.setdefault(codec.name.lower(), codec.payloadType)
        return out

    @property
    def rtx_payload_types(self) -> dict[int, int]:
        """Media payload type -> its RTX payload type."""
        out: dict[int, int] = {}
        for c in aiortc_compat.negotiated_codecs(self.transceiver):
            apt = c.parameters.get("apt")
            if is_rtx(c) and isinstance(apt, int) and c.payloadType is not None:
                out[apt] = c.payloadType
        return out

    @property
    def extension_ids(self) -> dict[str, int]:
        """Header-extension URI -> negotiated id."""
        return {ext.uri: ext.id for ext in aiortc_compat.negotiated_header_extensions(self.transceiver)}

    # -- fast path

    def send_rtp(self, packet: bytes) -> bool:
        """SRTP-protect a fully rewritten plaintext RTP packet and send it now. Returns False
        when the transport is not connected (yet / any more) or the track was removed."""
        length = len(packet)
        if not self._active or length > srtp.MAX_PLAINTEXT:
            return False
        srtp.SCRATCH[:length] = packet
        return self.send_scratch(length)

    def send_scratch(self, length: int) -> bool:
        """Like :meth:`send_rtp` for a packet already written to ``srtp.SCRATCH[:length]`` (the
        fan-out's per-copy path: no intermediate bytes object)."""
        if not self._active:
            return False
        size = self._peer._send_scratch(srtp.PROTECT_RTP, length)
        if not size:
            return False
        self.packets_sent += 1
        self.bytes_sent += size
        self.plaintext_bytes_sent += length
        return True

    def sync_sender_report(self, ntp_timestamp: int, rtp_timestamp: int) -> None:
        """The NTP/RTP timestamp pair (the publisher's SR translated to this track's timeline)
        for this SSRC's periodic Sender Report, which also carries this track's counters."""
        self.sender_report_time = (ntp_timestamp, rtp_timestamp & 0xFFFFFFFF)

    def sender_report(self) -> tuple[int, int, int, int] | None:
        """``(ntp, rtp_timestamp, packet_count, octet_count)`` for our SR, once a pair is known."""
        if self.sender_report_time is None or not self._active:
            return None
        ntp, rtp_timestamp = self.sender_report_time
        return ntp, rtp_timestamp, self.packets_sent, max(0, self.plaintext_bytes_sent - 12 * self.packets_sent)



def codec_preferences(kind: str, codecs: Iterable[str] | None, rtx: bool) -> list[RTCRtpCodecCapability]:
    capabilities = RTCRtpSender.getCapabilities(kind).codecs
    media_caps = [c for c in capabilities if not is_rtx(c)]
    rtx_caps = [c for c in capabilities if is_rtx(c)]
    if codecs is None:
        if rtx or not rtx_caps:
            return []  # aiortc's defaults
        return media_caps
    chosen: list[RTCRtpCodecCapability] = []
    for wanted in codecs:
        name = wanted.split("/")[-1].lower()
        matches = [c for c in media_caps if c.mimeType.split("/")[-1].lower() == name and c not in chosen]
        if not matches:
            raise ValueError(f"codec {wanted!r} not supported for {kind}")
        chosen += matches
    if rtx and kind == "video":
        chosen += rtx_caps
    return chosen
