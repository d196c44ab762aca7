"""``MediaPeer``: one aiortc ``RTCPeerConnection`` reduced to what an RTP-level SFU needs.

aiortc keeps doing signalling (SDP), ICE (aioice), the DTLS handshake, SRTP keying, SCTP data
channels and RTCP sender reports. Media bypasses its RTP stack entirely (see
docs/aiortc-sfu-notes.md section 1):

* receive: every host socket's ``StunProtocol.datagram_received`` is replaced on the instance.
  SRTP/SRTCP (first byte 128-191) is unprotected synchronously with the DTLS transport's
  ``_rx_srtp`` and handed to ``on_rtp`` / ``on_rtcp`` as plaintext bytes; STUN, DTLS and
  everything else goes to aioice's original method. aiortc's receivers never start (no decoder
  thread, no RR task); ``RTCDtlsTransport._handle_rtp_data`` / ``_handle_rtcp_data`` are
  overridden too, as a fallback for datagrams that still take aioice's queue.
* send: ``_tx_srtp.protect`` + ``DatagramTransport.sendto`` to the nominated pair, no await.
  Outgoing m-lines are sendonly transceivers whose track never yields (:class:`NullTrack`), so
  aiortc's sender loop sleeps and only its RTCP SR/SDES task runs.

Every datagram is counted (``bytes_sent``/``bytes_received``...: UDP payload bytes on the wire,
i.e. after SRTP, including STUN/DTLS/SCTP) from the moment the local description is set.

Callbacks run synchronously inside the socket callback; they must not block, and exceptions
they raise are logged and swallowed (an exception escaping ``datagram_received`` would make
asyncio close the socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import types
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import pylibsrtp
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCConfiguration
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.sdp import candidate_from_sdp

from shared.errors import MediaError

from ..rtp.rtcp import build_sdes, build_sr
from . import consent, lazy_estimator, srtp
from .ice import rtc_configuration
from .ice_restart import IceSwitch
from .rtcp import feedback_media_ssrcs, iter_rtcp
from .sdp import (
    MID_URI,
    REPAIRED_RID_URI,
    RID_URI,
    MediaSection,
    munge_publisher_answer,
    parse_sdp,
    remove_extmaps,
    strip_inactive_msids,
)
from .sender_reports import SenderReportClock, run_rtcp_quietly

__all__ = [
    "MediaPeer",
    "MediaPeerClosedError",
    "MediaPeerError",
    "MediaPeerTimeoutError",
    "NullTrack",
    "OutgoingTrack",
]

logger = logging.getLogger(__name__)

lazy_estimator.install()  # receivers are created for every m-line and never fed

T = TypeVar("T")
RtpCallback = Callable[[bytes], None]
DataCallback = Callable[[str, bytes], None]
StateCallback = Callable[[str], None]
TrackRtpCallback = Callable[[str, str, bytes], None]

_MARK = "_meshrtc_peer"
_NOMINATION_MARK = "_meshrtc_nomination"


class MediaPeerError(MediaError):
    """A negotiation step failed; the peer has been closed."""


class MediaPeerTimeoutError(MediaPeerError, TimeoutError):
    """A negotiation step missed its deadline; the peer has been closed."""


class MediaPeerClosedError(MediaPeerError):
    """The peer is closed."""


class NullTrack(MediaStreamTrack):
    """A track whose ``recv()`` never returns, so aiortc's ``RTCRtpSender._run_rtp`` sleeps
    instead of polling (it polls every 20 ms with no track). Its id becomes the msid track id."""

    def __init__(self, kind: str, track_id: str) -> None:
        super().__init__()
        self.kind = kind
        self._id = track_id

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
        self, peer: MediaPeer, transceiver: RTCRtpTransceiver, kind: str, track_id: str, stream_id: str
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
        return self.transceiver.sender._ssrc

    @property
    def rtx_ssrc(self) -> int | None:
        """The RTX SSRC announced in the ``FID`` group, if RTX was negotiated."""
        if any(is_rtx(c) for c in self.transceiver._codecs):
            return self.transceiver.sender._rtx_ssrc
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
        return list(self.transceiver._codecs)

    @property
    def payload_type(self) -> int | None:
        """Payload type of the preferred (first) negotiated codec."""
        return next((c.payloadType for c in self.transceiver._codecs if not is_rtx(c)), None)

    @property
    def payload_types(self) -> dict[str, int]:
        """Codec name (lower case, e.g. ``"vp8"``, ``"opus"``) -> payload type (first match)."""
        out: dict[str, int] = {}
        for codec in self.transceiver._codecs:
            if not is_rtx(codec):
                out.setdefault(codec.name.lower(), codec.payloadType)
        return out

    @property
    def rtx_payload_types(self) -> dict[int, int]:
        """Media payload type -> its RTX payload type."""
        return {
            c.parameters["apt"]: c.payloadType
            for c in self.transceiver._codecs
            if is_rtx(c) and isinstance(c.parameters.get("apt"), int)
        }

    @property
    def extension_ids(self) -> dict[str, int]:
        """Header-extension URI -> negotiated id."""
        return {ext.uri: ext.id for ext in self.transceiver._headerExtensions}

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


class MediaPeer:
    _open_peers = 0
    """One PeerConnection of a participant, publisher (client offers) or subscriber (we offer).

    Callbacks (plain attributes, synchronous, set any time):

    * ``on_rtp(plaintext_rtp: bytes)`` -- every RTP packet received (publisher media);
    * ``on_rtcp(plaintext_compound_rtcp: bytes)`` -- every RTCP datagram received (SR from a
      publisher, feedback from a subscriber); feedback is also routed per
      :attr:`OutgoingTrack.on_rtcp`;
    * ``on_data(label: str, data: bytes)`` -- a data-channel message (str messages are UTF-8
      encoded).

    ``on_state(callback)`` registers ``callback(state)`` for connection-state changes
    (``connecting``, ``connected``, ``failed``, ``closed``).
    """

    def __init__(
        self,
        role: str = "publisher",
        *,
        name: str = "",
        label: str | None = None,
        timeout: float = 10.0,
        close_timeout: float = 5.0,
        configuration: RTCConfiguration | None = None,
    ) -> None:
        self.role = role
        self.name = label if label is not None else name
        self.timeout = timeout
        self.close_timeout = close_timeout
        self.pc = RTCPeerConnection(configuration or rtc_configuration())

        self.on_rtp: RtpCallback | None = None
        self.on_rtcp: RtpCallback | None = None
        self.on_data: DataCallback | None = None
        #: optional demultiplexed form of ``on_rtp``: ``(mid, rid, plaintext_rtp)``; rid is ""
        #: for non-simulcast m-lines (RTX packets report the rid they repair)
        self.on_rtp_track: TrackRtpCallback | None = None
        self._state_callbacks: list[StateCallback] = []
        self._state_callback: StateCallback | None = None

        # wire counters (UDP payload bytes, after SRTP)
        self.bytes_sent = 0
        self.packets_sent = 0
        self.bytes_received = 0
        self.packets_received = 0
        self.srtp_errors = 0
        self.send_drops = 0  # datagrams dropped because the socket's send buffer was full

        #: m-lines of the last remote description (the client's offer, or its answer)
        self.remote_media: list[MediaSection] = []

        self._demux = _Demux()
        # (libsrtp context, sendto, remote address, the pylibsrtp session keeping the context alive)
        self._tx: tuple[Any, Callable[..., None], tuple[str, int], pylibsrtp.Session] | None = None
        self._outgoing: dict[str, OutgoingTrack] = {}
        self._rtcp_routes: dict[int, OutgoingTrack] = {}
        self._channels: dict[str, RTCDataChannel] = {}
        self._pending_candidates: list[Any] = []
        self._remote_description_set = False
        self._lock = asyncio.Lock()
        self._closed = False
        self._close_task: asyncio.Future[None] | None = None
        self._state = "new"
        self._owned: list[Any] = []  # aiortc/aioice objects whose tasks close() reaps
        self._record_owned()

        self.pc.on("connectionstatechange", self._on_pc_state)
        self.pc.on("datachannel", self._adopt_channel)
        MediaPeer._open_peers += 1

    def __repr__(self) -> str:
        return f"MediaPeer({self.role} {self.name!r} {self._state})"

    @classmethod
    def open_count(cls) -> int:
        """Peers created and not yet fully closed (leak checks, node stats)."""
        return cls._open_peers

    # ------------------------------------------------------------------ state

    @property
    def connection_state(self) -> str:
        return self._state

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def connected(self) -> bool:
        return self._tx is not None

    @property
    def on_state(self) -> Callable[[StateCallback], None]:
        """``peer.on_state(cb)`` adds a state listener; ``peer.on_state = cb`` sets the primary
        one (replacing the previous primary). Both get ``cb(state)``."""
        return self._state_callbacks.append

    @on_state.setter
    def on_state(self, callback: StateCallback | None) -> None:
        self._state_callback = callback

    async def wait_connected(self, time_limit: float | None = None) -> None:
        """Wait until DTLS is up; raises :class:`MediaPeerError` on failure/close."""
        if self._tx is not None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()

        def watch(state: str) -> None:
            if state in ("connected", "failed", "closed") and not done.done():
                done.set_result(state)

        self._state_callbacks.append(watch)
        try:
            if self._closed:
                raise MediaPeerClosedError("peer is closed")
            state = await asyncio.wait_for(done, time_limit if time_limit is not None else self.timeout)
        except TimeoutError as exc:
            raise MediaPeerTimeoutError("connection not established in time") from exc
        finally:
            with contextlib.suppress(ValueError):
                self._state_callbacks.remove(watch)
        if state != "connected":
            raise MediaPeerError(f"connection {state}")

    def _emit_state(self, state: str) -> None:
        if state == self._state:
            return
        self._state = state
        callbacks = list(self._state_callbacks)
        if self._state_callback is not None:
            callbacks.insert(0, self._state_callback)
        for callback in callbacks:
            try:
                callback(state)
            except Exception:
                logger.exception("%r: state callback failed", self)

    def _on_pc_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self._activate_fast_path()
        elif state in ("failed", "closed"):
            self._stop_sending()
        if self._closed and state != "closed":
            return
        self._emit_state(state)

    # ------------------------------------------------------------------ negotiation

    async def accept_offer(self, sdp: str, *, time_limit: float | None = None) -> str:
        """Publisher role: apply the client's offer and return our answer (candidates embedded,
        simulcast accepted, client-side receive m-lines answered ``inactive``)."""
        return await self._operation("accept_offer", self._accept_offer(sdp), time_limit)

    def incoming_media(self) -> list[MediaSection]:
        """Publisher role: the audio/video m-lines of the client's last offer that send media
        (``mid``, ``kind``, ``track_id``/``stream_id`` from msid, ``mime_type``, ``rids``,
        ``ssrcs``, ``extmaps``, ``codecs``)."""
        return [m for m in self.remote_media if m.sends]

    async def create_offer(self, *, ice_restart: bool = False, time_limit: float | None = None) -> str:
        """Subscriber role: a (re)offer covering every outgoing track and data channel; with
        ``ice_restart`` it carries fresh ICE credentials and candidates (see ice_restart.py)."""
        return await self._operation("create_offer", self._create_offer(ice_restart), time_limit)

    async def accept_answer(self, sdp: str, *, time_limit: float | None = None) -> None:
        """Subscriber role: apply the client's answer to our last offer."""
        await self._operation("accept_answer", self._accept_answer(sdp), time_limit)

    async def add_remote_candidate(
        self, candidate: str | dict[str, Any] | None, *, time_limit: float | None = None
    ) -> None:
        """A trickled remote candidate: ``"candidate:..."`` (with or without ``a=``) or an
        RTCIceCandidateInit dict (``{"candidate": ..., "sdpMid": ...}``, as LiveKit clients send);
        ``None`` or ``""`` signals end-of-candidates. All m-lines share one ICE transport
        (max-bundle), so sdpMid / sdpMLineIndex do not matter. A malformed candidate raises
        ``ValueError`` and leaves the peer open."""
        if isinstance(candidate, dict):
            candidate = candidate.get("candidate") or None
        parsed = None
        if candidate:
            text = candidate[2:] if candidate.startswith("a=") else candidate
            try:
                parsed = candidate_from_sdp(text.removeprefix("candidate:"))
            except (ValueError, IndexError, AssertionError) as exc:  # aiortc asserts the field count
                raise ValueError(f"malformed ICE candidate {candidate!r}") from exc
        # Unlike the other operations, a candidate that cannot be used (TCP, IPv6 we do not
        # gather, one arriving while a long negotiation holds the lock) is dropped: a client
        # trickles hundreds, and losing one must not close the PeerConnection.
        if self._closed:
            return
        try:
            async with asyncio.timeout(self.timeout if time_limit is None else time_limit):
                async with self._lock:
                    if not self._closed:
                        await self._add_remote_candidate(parsed)
        except Exception as exc:
            logger.debug("%r: remote candidate %r dropped: %r", self, candidate, exc)

    async def _accept_offer(self, sdp: str) -> str:
        parsed = parse_sdp(sdp)
        switch = self._ice_switch()
        restart = switch is not None and switch.is_new_remote(parsed.ice_ufrag)
        if restart:
            await switch.begin()  # before the description: its candidates belong to the new connection
            self._install_hooks()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self._remote_description_set = True
        self.remote_media = parsed.media
        self._demux.configure(self.remote_media)
        self._neutralize_receivers()
        await self._flush_candidates()
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        self._install_hooks()
        if restart and switch is not None and parsed.ice_ufrag and parsed.ice_pwd:
            switch.connect(parsed.ice_ufrag, parsed.ice_pwd)
        return munge_publisher_answer(sdp, self.pc.localDescription.sdp)

    async def _create_offer(self, ice_restart: bool = False) -> str:
        switch = self._ice_switch() if ice_restart else None
        if switch is not None:
            await switch.begin()
            self._install_hooks()
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        self._neutralize_receivers()
        self._install_hooks()
        # aiortc offers the RID extensions on video now (sdp.py registers them for publisher
        # answers); subscribers never receive rid-tagged streams from us.
        sdp = remove_extmaps(self.pc.localDescription.sdp, (RID_URI, REPAIRED_RID_URI))
        return strip_inactive_msids(sdp)

    async def _accept_answer(self, sdp: str) -> None:
        parsed = parse_sdp(sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        self._remote_description_set = True
        self.remote_media = parsed.media
        await self._flush_candidates()
        self._refresh_routes()
        switch = self._ice_switch()
        if switch is not None and switch.awaiting_remote and parsed.ice_ufrag and parsed.ice_pwd:
            switch.connect(parsed.ice_ufrag, parsed.ice_pwd)

    async def _add_remote_candidate(self, candidate: Any) -> None:
        ice = self._ice_transport()
        # (not pc.remoteDescription: aiortc serializes the whole SDP on every access of that property,
        # which made trickle -- dozens of candidates per client -- the costliest part of a join storm)
        if ice is None or not self._remote_description_set:
            # trickled before the offer/answer it belongs to: applied with the next description
            self._pending_candidates.append(candidate)
            return
        await ice.addRemoteCandidate(candidate)

    async def _flush_candidates(self) -> None:
        pending, self._pending_candidates = self._pending_candidates, []
        ice = self._ice_transport()
        for candidate in pending:
            await ice.addRemoteCandidate(candidate)

    async def _operation(self, name: str, coro: Awaitable[T], time_limit: float | None) -> T:
        if self._closed:
            if asyncio.iscoroutine(coro):
                coro.close()
            raise MediaPeerClosedError(f"{name}: peer is closed")
        deadline = self.timeout if time_limit is None else time_limit

        async def guarded() -> T:
            async with self._lock:
                if self._closed:
                    raise MediaPeerClosedError(f"{name}: peer is closed")
                return await coro

        try:
            return await asyncio.wait_for(guarded(), deadline)
        except asyncio.CancelledError:
            self._start_close()
            raise
        except MediaPeerClosedError:
            raise
        except TimeoutError as exc:
            logger.warning("%r: %s timed out after %.1fs, closing", self, name, deadline)
            await self.close()
            raise MediaPeerTimeoutError(f"{name} timed out after {deadline:.1f}s") from exc
        except Exception as exc:
            logger.warning("%r: %s failed (%s), closing", self, name, exc)
            await self.close()
            raise MediaPeerError(f"{name} failed: {exc}") from exc

    # ------------------------------------------------------------------ outgoing tracks

    def add_outgoing(
        self,
        kind: str,
        track_id: str,
        stream_id: str,
        *,
        codecs: Sequence[str] | None = None,
        rtx: bool = True,
        ssrc: int | None = None,
        rtx_ssrc: int | None = None,
    ) -> OutgoingTrack:
        """Add a sendonly m-line ``a=msid:<stream_id> <track_id>`` announcing ``ssrc`` (random if
        not given). ``codecs``: mime types or names in preference order (e.g. ``["VP8"]``);
        default all of aiortc's. Takes effect with the next :meth:`create_offer`."""
        if self._closed:
            raise MediaPeerClosedError("peer is closed")
        if kind not in ("audio", "video"):
            raise ValueError(f"invalid kind {kind!r}")
        if track_id in self._outgoing:
            raise ValueError(f"track {track_id!r} already added")
        preferences = _codec_preferences(kind, codecs, rtx)
        transceiver = self.pc.addTransceiver(NullTrack(kind, track_id), direction="sendonly")
        if preferences:
            transceiver.setCodecPreferences(preferences)
        sender = transceiver.sender
        sender._stream_id = stream_id
        if ssrc is None:
            ssrc = self._unused_ssrc()
        sender._ssrc = ssrc
        transceiver.receiver._set_rtcp_ssrc(ssrc)
        sender._rtx_ssrc = rtx_ssrc if rtx_ssrc is not None else self._unused_ssrc(exclude=ssrc)
        # Sender Reports come from SenderReportClock (one timer), not from a task per sender.
        sender._run_rtcp = types.MethodType(run_rtcp_quietly, sender)  # type: ignore[method-assign]
        self._neutralize_receivers()
        track = OutgoingTrack(self, transceiver, kind, track_id, stream_id)
        self._outgoing[track_id] = track
        self._refresh_routes()
        if self._tx is not None:
            SenderReportClock.current().add(self)
        return track

    async def remove_outgoing(self, track: OutgoingTrack | str) -> None:
        """Stop sending a track: its m-line becomes ``inactive`` in the next offer and aiortc's
        sender tasks stop (sending an RTCP BYE if it had started)."""
        track_id = track if isinstance(track, str) else track.track_id
        out = self._outgoing.pop(track_id, None)
        if out is None:
            return
        out.removed = True
        out._active = False
        out.on_rtcp = None
        self._refresh_routes()
        transceiver = out.transceiver
        transceiver.direction = "inactive"
        try:
            await asyncio.wait_for(transceiver.stop(), self.close_timeout)
        except (TimeoutError, ConnectionError) as exc:
            logger.warning("%r: stopping %r: %s", self, out, exc)

    @property
    def outgoing(self) -> dict[str, OutgoingTrack]:
        return dict(self._outgoing)

    def _unused_ssrc(self, exclude: int | None = None) -> int:
        used = {exclude}
        for t in self.pc.getTransceivers():
            used.add(t.sender._ssrc)
            used.add(t.sender._rtx_ssrc)
        while True:
            value = random.getrandbits(32)
            if value and value not in used:
                return value

    def _refresh_routes(self) -> None:
        routes: dict[int, OutgoingTrack] = {}
        for out in self._outgoing.values():
            out._active = not out.removed and out.transceiver.currentDirection in ("sendonly", "sendrecv")
            routes[out.ssrc] = out
            rtx_ssrc = out.transceiver.sender._rtx_ssrc
            if rtx_ssrc:
                routes[rtx_ssrc] = out
        self._rtcp_routes = routes

    # ------------------------------------------------------------------ RTCP / RTP send

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
        cname = (getattr(self.pc, "_RTCPeerConnection__cname", None) or self.name).encode()[:255]
        for start in range(0, len(reports), 31):
            chunk = reports[start:start + 31]
            packet = b"".join(build_sr(*report) for report in chunk)
            # one SDES per SSRC: aiortc's parser misreads multi-chunk SDES of most CNAME lengths
            self.send_rtcp(packet + b"".join(build_sdes([(report[0], cname)]) for report in chunk))

    # ------------------------------------------------------------------ data channels

    def create_data_channel(
        self,
        label: str,
        *,
        ordered: bool = True,
        max_retransmits: int | None = None,
        max_packet_lifetime: int | None = None,
    ) -> RTCDataChannel:
        if self._closed:
            raise MediaPeerClosedError("peer is closed")
        channel = self.pc.createDataChannel(
            label, ordered=ordered, maxRetransmits=max_retransmits, maxPacketLifeTime=max_packet_lifetime
        )
        self._adopt_channel(channel)
        return channel

    @property
    def data_channels(self) -> dict[str, RTCDataChannel]:
        return dict(self._channels)

    def send_data(self, label: str, data: bytes) -> bool:
        """Queue a message on the channel with that label; False if it is not open."""
        channel = self._channels.get(label)
        if channel is None or channel.readyState != "open":
            return False
        channel.send(data)
        return True

    def _adopt_channel(self, channel: RTCDataChannel) -> None:
        label = channel.label
        self._channels[label] = channel

        def on_message(message: bytes | str) -> None:
            callback = self.on_data
            if callback is None:
                return
            payload = message.encode() if isinstance(message, str) else bytes(message)
            try:
                callback(label, payload)
            except Exception:
                logger.exception("%r: on_data callback failed", self)

        def on_close() -> None:
            if self._channels.get(label) is channel:
                del self._channels[label]

        channel.on("message", on_message)
        channel.on("close", on_close)

    # ------------------------------------------------------------------ hooks

    def _dtls_transports(self) -> list[RTCDtlsTransport]:
        found: list[RTCDtlsTransport] = []
        for transceiver in self.pc.getTransceivers():
            dtls = transceiver.receiver.transport
            if dtls not in found:
                found.append(dtls)
        if self.pc.sctp is not None and self.pc.sctp.transport not in found:
            found.append(self.pc.sctp.transport)
        return found

    def _ice_transport(self) -> Any:
        transports = self._dtls_transports()
        return transports[0].transport if transports else None

    def _neutralize_receivers(self) -> None:
        """aiortc's receivers never run: no decoder thread, no jitter buffer, no RR task."""
        for transceiver in self.pc.getTransceivers():
            receiver = transceiver.receiver
            if getattr(receiver, _MARK, None) is self:
                continue
            setattr(receiver, _MARK, self)

            async def receive(parameters: Any, _receiver: Any = receiver) -> None:
                _receiver._meshrtc_parameters = parameters

            receiver.receive = receive  # type: ignore[method-assign]
            if getattr(receiver, "_RTCRtpReceiver__decoder_thread", None) is not None:
                receiver._RTCRtpReceiver__stop_decoder()  # type: ignore[attr-defined]

    @property
    def ice_restarts(self) -> int:
        """ICE restarts begun on this connection (ice_restart.py)."""
        switch = self._ice_switch()
        return switch.restarts if switch is not None else 0

    def _ice_switch(self) -> IceSwitch | None:
        """The ICE restart switch of the (bundled) transport, once ICE has been set up."""
        ice = self._ice_transport()
        return IceSwitch.of(ice, self._ice_switched) if ice is not None else None

    def _ice_switched(self) -> None:
        """An ICE restart selected its pair: the fast path and socket hooks follow it."""
        self._install_hooks()
        self._activate_fast_path()

    def _install_hooks(self) -> None:
        for dtls in self._dtls_transports():
            IceSwitch.of(dtls.transport, self._ice_switched)  # before DTLS first reads from ICE
            if getattr(dtls, _MARK, None) is not self:
                setattr(dtls, _MARK, self)
                dtls._handle_rtp_data = self._fallback_rtp  # type: ignore[method-assign]
                dtls._handle_rtcp_data = self._fallback_rtcp  # type: ignore[method-assign]
            for protocol in dtls.transport._connection._protocols:
                if getattr(protocol, _MARK, None) is not self:
                    self._hook_protocol(protocol, dtls)
        self._record_owned()

    def _record_owned(self) -> None:
        """Remember the aiortc/aioice objects of this connection: close() reaps their tasks."""
        objects: list[Any] = [self.pc]
        for transceiver in self.pc.getTransceivers():
            objects += [transceiver, transceiver.sender, transceiver.receiver]
        if self.pc.sctp is not None:
            objects.append(self.pc.sctp)
        for dtls in self._dtls_transports():
            objects += [dtls, dtls.transport, dtls.transport._connection]
        for ice in getattr(self.pc, "_RTCPeerConnection__iceTransports", ()):
            objects += [ice, ice._connection]
            consent.install(ice._connection)
            self._follow_nomination(ice._connection)
        known = {id(obj) for obj in self._owned}
        for obj in objects:
            if id(obj) not in known:
                known.add(id(obj))
                self._owned.append(obj)

    def _follow_nomination(self, connection: Any) -> None:
        """The fast path caches the nominated pair's socket and address; a controlling peer
        (libwebrtc) may nominate another pair later, which aioice adopts in ``check_complete``:
        re-resolve then, or media and RTCP keep going to an address the peer may have pruned."""
        if getattr(connection, _NOMINATION_MARK, None) is self:
            return
        setattr(connection, _NOMINATION_MARK, self)
        original = connection.check_complete
        peer = self

        def check_complete(pair: Any) -> None:
            original(pair)
            if peer._tx is not None and not peer._closed:
                peer._activate_fast_path()

        connection.check_complete = check_complete

    def _all_protocols(self) -> list[Any]:
        protocols: list[Any] = []
        for obj in self._owned:
            for protocol in getattr(obj, "_protocols", ()):
                if protocol not in protocols:
                    protocols.append(protocol)
        return protocols

    def _hook_protocol(self, protocol: Any, dtls: RTCDtlsTransport) -> None:
        setattr(protocol, _MARK, self)
        original_received = protocol.datagram_received
        original_send_data = protocol.send_data
        peer = self

        def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
            peer.bytes_received += len(data)
            peer.packets_received += 1
            if data and 127 < data[0] < 192:
                srtp = dtls._rx_srtp
                if srtp is not None:
                    if len(data) > 1 and 191 < data[1] < 224:
                        try:
                            plain = srtp.unprotect_rtcp(data)
                        except (pylibsrtp.Error, ValueError):  # ValueError: longer than its buffer
                            peer.srtp_errors += 1
                            return
                        peer._deliver_rtcp(plain)
                        return
                    try:
                        plain = srtp.unprotect(data)
                    except (pylibsrtp.Error, ValueError):
                        peer.srtp_errors += 1
                        return
                    peer._deliver_rtp(plain)
                    return
            original_received(data, addr)

        async def send_data(data: bytes, addr: tuple[str, int]) -> None:
            peer.bytes_sent += len(data)
            peer.packets_sent += 1
            await original_send_data(data, addr)

        def send_stun(message: Any, addr: tuple[str, int]) -> None:
            data = bytes(message)
            peer.bytes_sent += len(data)
            peer.packets_sent += 1
            protocol.transport.sendto(data, addr)

        protocol.datagram_received = datagram_received
        protocol.send_data = send_data
        protocol.send_stun = send_stun

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

    def _activate_fast_path(self) -> None:
        if self._closed:
            return
        for dtls in self._dtls_transports():
            tx_srtp = dtls._tx_srtp
            pair = dtls.transport._connection._nominated.get(1)
            if tx_srtp is None or pair is None:
                continue
            self._install_hooks()
            transport = pair.protocol.transport
            # The socket itself, not asyncio's transport.sendto (~1 µs of Python per datagram, and
            # a queue we do not want for media: a full send buffer drops, it does not delay).
            sock = getattr(transport, "_sock", None)
            sendto = sock.sendto if isinstance(sock, socket.socket) else transport.sendto
            self._tx = (srtp.srtp_context(tx_srtp), sendto, pair.remote_addr, tx_srtp)
            if self._outgoing:
                SenderReportClock.current().add(self)
            return

    # ------------------------------------------------------------------ close

    async def close(self) -> None:
        """Close the PeerConnection. Idempotent and bounded by ``close_timeout``: sockets are
        released and aiortc's tasks for this connection are finished or cancelled, even if
        DTLS never completed or aiortc's own close wedges."""
        if self._close_task is None:
            self._start_close()
        assert self._close_task is not None
        await asyncio.shield(self._close_task)

    def _start_close(self) -> None:
        if self._close_task is None:
            self._closed = True
            self._stop_sending()
            self._close_task = asyncio.ensure_future(self._do_close())

    async def _do_close(self) -> None:
        try:
            await self._close_pc()
        except Exception:
            logger.exception("%r: close failed", self)
        finally:
            MediaPeer._open_peers -= 1
            self._emit_state("closed")
            self._state_callbacks.clear()
            self.on_rtp = self.on_rtcp = self.on_data = self.on_rtp_track = None
            self._state_callback = None
            for out in self._outgoing.values():
                out.removed = True
                out._active = False
                out.on_rtcp = None
            self._rtcp_routes = {}
            self._channels.clear()
            self._owned.clear()

    async def _close_pc(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_timeout
        self._record_owned()
        owned_ids = {id(obj) for obj in self._owned}
        protocols = self._all_protocols()  # aioice forgets them while closing

        for ice in getattr(self.pc, "_RTCPeerConnection__iceTransports", ()):
            if (switch := getattr(ice, "_meshrtc_switch", None)) is not None:
                await switch.close()  # connections of an unfinished restart aiortc does not know
        close_task = asyncio.ensure_future(self.pc.close())
        done, _ = await asyncio.wait({close_task}, timeout=self.close_timeout)
        if close_task in done:
            if not close_task.cancelled() and close_task.exception() is not None:
                logger.warning("%r: RTCPeerConnection.close() failed: %r", self, close_task.exception())
        else:
            logger.warning("%r: RTCPeerConnection.close() wedged, forcing", self)
            close_task.cancel()
            await asyncio.wait({close_task}, timeout=0.2)
            # aiortc's later close() calls (it schedules one itself once DTLS is closed) await
            # this future; resolve it so they return instead of hanging.
            is_closed = getattr(self.pc, "_RTCPeerConnection__isClosed", None)
            if isinstance(is_closed, asyncio.Future) and not is_closed.done():
                is_closed.set_result(True)

        # Release the sockets whatever happened above.
        for protocol in protocols:
            transport = getattr(protocol, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.close()

        # Reap aiortc/aioice tasks of this connection that outlive close(): e.g. the connect
        # task of a half-negotiated PC only notices the ICE failure a few iterations later, and
        # a forced close leaves consent/check/receive tasks behind. Rescan, as finishing tasks
        # may spawn others (aiortc closes itself once DTLS is closed).
        current = asyncio.current_task()
        reap_deadline = loop.time() + max(0.5, min(1.5, deadline - loop.time()))
        for _ in range(4):
            pending = [t for t in _tasks_owned_by(owned_ids) if t is not current]
            if not pending:
                break
            wait = reap_deadline - loop.time()
            still = set(pending)
            if wait > 0:
                _, still = await asyncio.wait(pending, timeout=wait)
            if still:
                logger.debug("%r: cancelling %d lingering tasks", self, len(still))
                for task in still:
                    task.cancel()
                await asyncio.wait(still, timeout=0.2)
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # let connection_lost callbacks run


class _Demux:
    """SSRC -> (mid, rid) for a publisher connection.

    Signalled SSRCs (``a=ssrc``, FID groups) are known from the offer; rid-simulcast SSRCs are
    learned from the first packet carrying the MID and RID / repaired-RID header extensions
    (libwebrtc stops sending them after a while, so the mapping is cached per SSRC). A packet
    that cannot be mapped yet falls back to its payload type if exactly one m-line uses it."""

    def __init__(self) -> None:
        self.routes: dict[int, tuple[str, str]] = {}
        self._ext_ids: dict[int, str] = {}  # extmap id -> "mid" | "rid" | "rrid"
        self._pt_mid: dict[int, str] = {}
        self._mids: set[str] = set()

    def configure(self, media: list[MediaSection]) -> None:
        names = {MID_URI: "mid", RID_URI: "rid", REPAIRED_RID_URI: "rrid"}
        sending = [m for m in media if m.sends and m.mid is not None]
        self._mids = {m.mid for m in sending if m.mid is not None}
        self._ext_ids = {ext_id: names[uri] for m in sending for ext_id, uri in m.extmaps.items() if uri in names}
        pt_owners: dict[int, set[str]] = {}
        for m in sending:
            for pt in m.codecs:
                pt_owners.setdefault(pt, set()).add(m.mid or "")
        self._pt_mid = {pt: next(iter(mids)) for pt, mids in pt_owners.items() if len(mids) == 1}
        # forget SSRCs of m-lines that stopped sending, then add the signalled ones
        self.routes = {ssrc: route for ssrc, route in self.routes.items() if route[0] in self._mids}
        for m in sending:
            for ssrc in m.ssrcs:
                self.routes[ssrc] = (m.mid or "", "")

    def learn(self, packet: bytes) -> tuple[str, str]:
        values = _header_extensions(packet, self._ext_ids)
        mid = values.get("mid", "")
        rid = values.get("rid") or values.get("rrid") or ""
        ssrc = int.from_bytes(packet[8:12], "big")
        if mid in self._mids:
            route = (mid, rid)
            self.routes[ssrc] = route
            return route
        return (self._pt_mid.get(packet[1] & 0x7F, ""), rid)


def _header_extensions(packet: bytes, wanted: dict[int, str]) -> dict[str, str]:
    """Values of the wanted header-extension ids (RFC 8285 one- and two-byte forms) as text."""
    out: dict[str, str] = {}
    if not wanted or not packet[0] & 0x10:
        return out
    offset = 12 + 4 * (packet[0] & 0x0F)
    if len(packet) < offset + 4:
        return out
    profile = (packet[offset] << 8) | packet[offset + 1]
    end = offset + 4 + 4 * ((packet[offset + 2] << 8) | packet[offset + 3])
    if end > len(packet):
        return out
    i = offset + 4
    if profile == 0xBEDE:
        while i < end:
            head = packet[i]
            if head == 0:
                i += 1
                continue
            ext_id, length = head >> 4, (head & 0x0F) + 1
            if ext_id == 15:
                break
            if ext_id in wanted:
                out[wanted[ext_id]] = packet[i + 1 : i + 1 + length].decode("ascii", "replace")
            i += 1 + length
    elif profile >> 4 == 0x100:
        while i + 1 < end:
            ext_id = packet[i]
            if ext_id == 0:
                i += 1
                continue
            length = packet[i + 1]
            if ext_id in wanted:
                out[wanted[ext_id]] = packet[i + 2 : i + 2 + length].decode("ascii", "replace")
            i += 2 + length
    return out


def _tasks_owned_by(owned_ids: set[int]) -> list[asyncio.Task[Any]]:
    """Running tasks whose top-level coroutine is a method of one of the given objects."""
    found = []
    for task in asyncio.all_tasks():
        if task.done():
            continue
        frame = getattr(task.get_coro(), "cr_frame", None)
        if frame is None:
            continue
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in owned_ids:
            found.append(task)
    return found


def _codec_preferences(kind: str, codecs: Iterable[str] | None, rtx: bool) -> list[RTCRtpCodecCapability]:
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
