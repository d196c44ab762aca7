"""The per-packet paths of a :class:`~.peer.MediaPeer`, with no aiortc object on them.

* receive: the socket hook (``aiortc_compat.hook_datagrams``) unprotects SRTP/SRTCP in the
  socket callback and calls :meth:`FastPath._deliver_rtp` / :meth:`FastPath._deliver_rtcp`,
  which hand plaintext to ``on_rtp`` / ``on_rtp_track`` and route RTCP feedback to the
  :class:`~.outgoing_track.OutgoingTrack` whose SSRC it names;
* send: :meth:`FastPath._send_scratch` protects ``srtp.SCRATCH`` in place with libsrtp and
  writes it to the nominated pair's socket, no await; the peer sets ``_tx`` once DTLS is up.

Callbacks run synchronously inside the socket callback; they must not block, and exceptions
they raise are logged and swallowed (an exception escaping ``datagram_received`` would make
asyncio close the socket).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pylibsrtp
from aiortc import RTCPeerConnection

from ..rtp.rtcp import build_sdes, build_sr
from . import aiortc_compat, srtp
from .demux import Demux
from .outgoing_track import OutgoingTrack
from .rtcp import feedback_media_ssrcs, iter_rtcp
from .sender_reports import SenderReportClock

__all__ = ["DataCallback", "FastPath", "RtpCallback", "SendPath", "TrackRtpCallback"]

logger = logging.getLogger(__name__)

RtpCallback = Callable[[bytes], None]
DataCallback = Callable[[str, bytes], None]
TrackRtpCallback = Callable[[str, str, bytes], None]
#: (libsrtp context, sendto, remote address, the pylibsrtp session keeping the context alive)
SendPath = tuple[Any, Callable[..., object], tuple[str, int], pylibsrtp.Session]


class FastPath:
    """Callbacks, wire counters and the send/receive paths; a base of ``MediaPeer``, so the hot
    paths stay plain method calls on the peer (no extra object or lookup per packet)."""

    # set by MediaPeer
    pc: RTCPeerConnection
    name: str

    def __init__(self) -> None:
        self.on_rtp: RtpCallback | None = None
        self.on_rtcp: RtpCallback | None = None
        self.on_data: DataCallback | None = None
        #: optional demultiplexed form of ``on_rtp``: ``(mid, rid, plaintext_rtp)``; rid is ""
        #: for non-simulcast m-lines (RTX packets report the rid they repair)
        self.on_rtp_track: TrackRtpCallback | None = None

        # wire counters (UDP payload bytes, after SRTP)
        self.bytes_sent = 0
        self.packets_sent = 0
        self.bytes_received = 0
        self.packets_received = 0
        self.srtp_errors = 0
        self.send_drops = 0  # datagrams dropped because the socket's send buffer was full

        self._demux = Demux()
        self._tx: SendPath | None = None
        self._outgoing: dict[str, OutgoingTrack] = {}
        self._rtcp_routes: dict[int, OutgoingTrack] = {}

    # ------------------------------------------------------------------ send

    def send_rtcp(self, packet: bytes) -> bool:
        """SRTCP-protect and send a plaintext (compound) RTCP packet now (PLI, NACK, RR, REMB)."""
        return self._send_packet(srtp.PROTECT_RTCP, packet) > 0

    def send_rtp(self, packet: bytes) -> bool:
        """Send a plaintext RTP packet not tied to an :class:`OutgoingTrack`."""
        return self._send_packet(srtp.PROTECT_RTP, packet) > 0

    def _send_packet(self, protect: Any, packet: bytes) -> int:
        length = len(packet)
        if self._tx is None or length > srtp.MAX_PLAINTEXT:
            return 0
        srtp.SCRATCH[:length] = packet
        return self._send_scratch(protect, length)

    def _send_scratch(self, protect: Any, length: int) -> int:
        """Protect ``srtp.SCRATCH[:length]`` in place and send it: the one send path of RTP and
        RTCP. The wire size, or 0 when nothing was sent."""
        tx = self._tx
        if tx is None:
            return 0
        size = srtp.protect_in_place(protect, tx[0], length)
        if not size:
            self.srtp_errors += 1
            return 0
        try:
            tx[1](srtp.SCRATCH[:size], tx[2])
        except BlockingIOError:  # the socket's send buffer is full: dropped, as the network would
            self.send_drops += 1
            return 0
        except (AttributeError, OSError):
            self._transport_lost()
            return 0
        self.packets_sent += 1
        self.bytes_sent += size
        return size

    def _transport_lost(self) -> None:
        """aioice closed the socket under us (consent expired, ICE failed): stop using the
        cached fast path; aiortc reports the state change and the session closes the peer."""
        self._stop_sending()

    def _stop_sending(self) -> None:
        self._tx = None
        SenderReportClock.current().discard(self)

    def send_sender_reports(self) -> None:
        """One compound SR (+ SDES CNAME) for the outgoing tracks whose timestamps are known;
        called by the process-wide :class:`SenderReportClock` instead of a task per track."""
        reports = []
        for out in self._outgoing.values():
            values = out.sender_report()
            if values is not None:
                reports.append((out.ssrc, *values))
        cname = (aiortc_compat.peer_cname(self.pc) or self.name).encode()[:255]
        for start in range(0, len(reports), 31):
            chunk = reports[start:start + 31]
            packet = b"".join(build_sr(*report) for report in chunk)
            # one SDES per SSRC: aiortc's parser misreads multi-chunk SDES of most CNAME lengths
            self.send_rtcp(packet + b"".join(build_sdes([(report[0], cname)]) for report in chunk))

    # ------------------------------------------------------------------ receive

    def _refresh_routes(self) -> None:
        routes: dict[int, OutgoingTrack] = {}
        for out in self._outgoing.values():
            out._active = not out.removed and out.transceiver.currentDirection in ("sendonly", "sendrecv")
            routes[out.ssrc] = out
            rtx_ssrc = aiortc_compat.sender_ssrcs(out.transceiver.sender)[1]
            if rtx_ssrc:
                routes[rtx_ssrc] = out
        self._rtcp_routes = routes

    def _deliver_rtp(self, plain: bytes) -> None:
        callback = self.on_rtp
        if callback is not None:
            try:
                callback(plain)
            except Exception:
                logger.exception("%r: on_rtp callback failed", self)
        track_callback = self.on_rtp_track
        if track_callback is not None and len(plain) >= 12:
            route = self._demux.routes.get(int.from_bytes(plain[8:12], "big"))
            if route is None:
                route = self._demux.learn(plain)
            try:
                track_callback(route[0], route[1], plain)
            except Exception:
                logger.exception("%r: on_rtp_track callback failed", self)

    def _deliver_rtcp(self, plain: bytes) -> None:
        callback = self.on_rtcp
        if callback is not None:
            try:
                callback(plain)
            except Exception:
                logger.exception("%r: on_rtcp callback failed", self)
        routes = self._rtcp_routes
        if not routes:
            return
        for packet_type, fmt, packet in iter_rtcp(plain):
            delivered: OutgoingTrack | None = None
            for ssrc in feedback_media_ssrcs(packet_type, fmt, packet):
                track = routes.get(ssrc)
                if track is None or track is delivered or track.on_rtcp is None:
                    continue
                delivered = track
                try:
                    track.on_rtcp(packet)
                except Exception:
                    logger.exception("%r: %r on_rtcp callback failed", self, track)

    async def _fallback_rtp(self, data: bytes, arrival_time_ms: int = 0) -> None:
        # Plaintext RTP that went through aiortc's queue (e.g. via a socket we did not hook).
        self._deliver_rtp(data)

    async def _fallback_rtcp(self, data: bytes) -> None:
        self._deliver_rtcp(data)
