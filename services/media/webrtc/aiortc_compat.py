"""The one module that reaches into aiortc, aioice and pylibsrtp internals.

Everything here depends on private attributes, name-mangled names or replaced methods of the
pinned versions (:data:`PINNED`); the rest of the package calls the small functions below and
never spells a private name of those libraries. Each hook has a contract test
(``tests/integration/media/test_aiortc_compat.py``) that checks, on real objects, that the
private thing it relies on still exists and behaves as assumed. Bumping a pin means running
those tests and fixing this module, nowhere else.

Two kinds of hooks:

* process-wide, installed by :func:`install` (explicitly, at media node start and in the
  fixtures that build peers without a node; idempotent): aiortc builds receivers' bandwidth
  estimators lazily, and negotiates the RID header extensions for video;
* per object, called by the peer as its aiortc/aioice objects appear: receivers that never run,
  socket-level SRTP demultiplexing, DTLS fallbacks, a quiet RTCP task per sender, consent,
  nomination following, and the ICE-transport plumbing of ICE restarts.

Importing this module patches nothing; it only checks the versions.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import socket
import types
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import aioice.ice as aioice_ice
import aiortc.codecs
import aiortc.rtcrtpreceiver
import pylibsrtp
from aioice import Connection
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from pylibsrtp._binding import ffi as srtp_ffi
from pylibsrtp._binding import lib as srtp_lib

from shared.errors import ConfigurationError

from .lazy_estimator import LazyRemoteBitrateEstimator
from .sdp import REPAIRED_RID_URI, RID_URI

__all__ = [
    "PINNED",
    "DatagramSink",
    "IncompatibleVersionError",
    "add_host_protocols",
    "connection_like",
    "connection_protocols",
    "connection_queue",
    "forget_unoffered_transceiver",
    "hook_datagrams",
    "ice_connection",
    "ice_transports",
    "install",
    "installed",
    "keep_connection_data",
    "negotiated_codecs",
    "negotiated_header_extensions",
    "nominated_pairs",
    "on_check_complete",
    "patch_ice_gathering",
    "peer_cname",
    "protocols_of",
    "quiet_sender_rtcp",
    "redirect_connection_data",
    "release_close_waiters",
    "replace_consent_check",
    "require_pinned_versions",
    "restore_ice_gathering",
    "route_dtls_fallback",
    "route_ice_io",
    "send_path",
    "sender_ssrcs",
    "set_sender_ssrcs",
    "set_track_id",
    "silence_receiver",
    "srtp_context",
    "srtp_ffi",
    "srtp_lib",
    "switch_ice_connection",
    "watch_ice_connection",
]

#: The versions whose internals this module was written against (pyproject pins the same).
#: pylibsrtp is not pinned there (``>=1.0``): its two internals are covered by contract tests.
PINNED = {"aiortc": "1.16.0", "aioice": "0.13.0"}

# Our own marks on library objects: which peer hooked them, so a hook is installed once.
_MARK = "_meshrtc_peer"
_NOMINATION_MARK = "_meshrtc_nomination"
_CONSENT_MARK = "_meshrtc_consent"


class IncompatibleVersionError(ConfigurationError, ImportError):
    """An installed aiortc/aioice is not the version this module was written for."""


def require_pinned_versions(found: dict[str, str] | None = None) -> None:
    """Raise :class:`IncompatibleVersionError` naming every library whose version differs."""
    if found is None:
        found = {name: importlib.metadata.version(name) for name in PINNED}
    wrong = [f"{name} {found.get(name)} (expected {expected})"
             for name, expected in PINNED.items() if found.get(name) != expected]
    if wrong:
        raise IncompatibleVersionError(
            "services.media.webrtc relies on private internals of exact versions; found "
            + ", ".join(wrong) + ". Pin them back or update aiortc_compat.py and its contract tests.")


require_pinned_versions()


# --------------------------------------------------------------------------- process-wide hooks

_installed = False


def install() -> None:
    """Install the process-wide hooks (idempotent). Call before the first PeerConnection."""
    global _installed
    if _installed:
        return
    # Receivers are created for every m-line and never fed: their estimator's 1000-bucket
    # rate counter was a fifth of a join storm's CPU (lazy_estimator.py).
    aiortc.rtcrtpreceiver.RemoteBitrateEstimator = LazyRemoteBitrateEstimator  # type: ignore[misc,assignment]
    _enable_rid_header_extensions()
    _installed = True


def installed() -> bool:
    return _installed


def _enable_rid_header_extensions() -> None:
    """aiortc negotiates only the header extensions listed in ``HEADER_EXTENSIONS``; without the
    RID ones a libwebrtc publisher offering rid simulcast falls back to its lowest layer. aiortc
    answers with the offer's ids, so ours only need to be unique in the list."""
    video = aiortc.codecs.HEADER_EXTENSIONS["video"]
    for uri in (RID_URI, REPAIRED_RID_URI):
        if any(ext.uri == uri for ext in video):
            continue
        used = {ext.id for ext in video}
        free = next(i for i in range(1, 15) if i not in used)
        video.append(RTCRtpHeaderExtensionParameters(id=free, uri=uri))


_original_get_host_addresses = aioice_ice.get_host_addresses
_original_get_component_candidates = aioice_ice.Connection.get_component_candidates


def patch_ice_gathering(
    get_host_addresses: Callable[..., list[str]],
    get_component_candidates: Callable[..., Awaitable[list[Any]]],
) -> None:
    """aioice has no settings for host addresses or ports: replace its two gathering steps."""
    aioice_ice.get_host_addresses = get_host_addresses
    aioice_ice.Connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign,assignment]


def restore_ice_gathering() -> None:
    aioice_ice.get_host_addresses = _original_get_host_addresses
    aioice_ice.Connection.get_component_candidates = _original_get_component_candidates  # type: ignore[method-assign]


def original_get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return _original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)


async def original_get_component_candidates(
    connection: Connection, component: int, addresses: list[str], timeout: int
) -> list[Any]:
    return await _original_get_component_candidates(connection, component, addresses, timeout)


def add_host_protocols(connection: Connection, protocols: list[aioice_ice.StunProtocol]) -> None:
    """Register sockets bound outside aioice so the connection checks, sends and closes them."""
    connection._protocols += protocols


# --------------------------------------------------------------------------- peer connection

def ice_transports(pc: RTCPeerConnection) -> list[RTCIceTransport]:
    return list(getattr(pc, "_RTCPeerConnection__iceTransports", ()))


def peer_cname(pc: RTCPeerConnection) -> str | None:
    cname: str | None = getattr(pc, "_RTCPeerConnection__cname", None)
    return cname


def release_close_waiters(pc: RTCPeerConnection) -> None:
    """After a cancelled ``close()``: aiortc's later ``close()`` calls (it schedules one itself
    once DTLS is closed) await this future; resolve it so they return instead of hanging."""
    is_closed = getattr(pc, "_RTCPeerConnection__isClosed", None)
    if isinstance(is_closed, asyncio.Future) and not is_closed.done():
        is_closed.set_result(True)


def forget_unoffered_transceiver(pc: RTCPeerConnection, transceiver: RTCRtpTransceiver) -> bool:
    """Drop a transceiver that no offer ever carried (its mid is still None) from the
    PeerConnection. aiortc matches each m-line of a remote answer to the first transceiver of
    the same kind whose mid is None or equal, stopped ones included, so such a transceiver would
    take the m-line of the next one added, which then never becomes negotiated. True if dropped."""
    if transceiver.mid is not None:
        return False
    transceivers: list[RTCRtpTransceiver] = getattr(pc, "_RTCPeerConnection__transceivers", [])
    if transceiver not in transceivers:
        return False
    transceivers.remove(transceiver)
    return True


def protocols_of(obj: object) -> list[Any]:
    """The sockets (aioice ``StunProtocol``) an aioice ``Connection`` owns; [] for other objects."""
    return list(getattr(obj, "_protocols", ()))


# --------------------------------------------------------------------------- tracks, senders, receivers

def set_track_id(track: MediaStreamTrack, track_id: str) -> None:
    """``MediaStreamTrack.id`` is read-only and becomes the msid track id."""
    track._id = track_id


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    return list(transceiver._codecs)


def negotiated_header_extensions(transceiver: RTCRtpTransceiver) -> list[RTCRtpHeaderExtensionParameters]:
    return list(transceiver._headerExtensions)


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    """``(ssrc, rtx_ssrc)`` the sender announces."""
    return sender._ssrc, sender._rtx_ssrc


def set_sender_ssrcs(transceiver: RTCRtpTransceiver, stream_id: str, ssrc: int, rtx_ssrc: int) -> None:
    """What the offer announces for this m-line (msid stream, SSRC, FID group), and the SSRC the
    receiver half uses as sender of its RTCP."""
    sender = transceiver.sender
    sender._stream_id = stream_id
    sender._ssrc = ssrc
    transceiver.receiver._set_rtcp_ssrc(ssrc)
    sender._rtx_ssrc = rtx_ssrc


async def _run_rtcp_quietly(self: RTCRtpSender) -> None:
    # Bound to the sender (hence ``self``): MediaPeer.close reaps it like aiortc's own tasks.
    # It only sets the events RTCRtpSender.stop() waits for.
    self._RTCRtpSender__rtcp_started.set()  # type: ignore[attr-defined]
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        pass
    finally:
        self._RTCRtpSender__rtcp_exited.set()  # type: ignore[attr-defined]


def quiet_sender_rtcp(sender: RTCRtpSender) -> None:
    """The sender's own SR/SDES task becomes a no-op; sender_reports.py sends SRs for all tracks."""
    sender._run_rtcp = types.MethodType(_run_rtcp_quietly, sender)  # type: ignore[method-assign]


def silence_receiver(receiver: RTCRtpReceiver, owner: object) -> None:
    """Media bypasses aiortc's receive path: no decoder thread, no jitter buffer, no RR task.
    ``receive()`` only remembers its parameters. Once per receiver and owner."""
    if getattr(receiver, _MARK, None) is owner:
        return
    setattr(receiver, _MARK, owner)

    async def receive(parameters: Any, _receiver: Any = receiver) -> None:
        _receiver._meshrtc_parameters = parameters

    receiver.receive = receive  # type: ignore[method-assign]
    if getattr(receiver, "_RTCRtpReceiver__decoder_thread", None) is not None:
        receiver._RTCRtpReceiver__stop_decoder()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- DTLS / SRTP

def srtp_context(session: pylibsrtp.Session) -> Any:
    """The ``srtp_t`` of a pylibsrtp session (valid while the session object lives)."""
    return session._srtp[0]


def send_path(dtls: RTCDtlsTransport) -> tuple[Any, Callable[..., object], tuple[str, int], pylibsrtp.Session] | None:
    """``(libsrtp context, sendto, remote address, tx session)`` for sending on the nominated
    pair without aiortc, or None before DTLS is up or a pair is nominated."""
    tx_srtp = dtls._tx_srtp
    pair = dtls.transport._connection._nominated.get(1)
    if tx_srtp is None or pair is None:
        return None
    transport = pair.protocol.transport
    # The socket itself, not asyncio's transport.sendto (~1 µs of Python per datagram, and a
    # queue we do not want for media: a full send buffer drops, it does not delay).
    sock = getattr(transport, "_sock", None)
    sendto: Callable[..., object] = sock.sendto if isinstance(sock, socket.socket) else transport.sendto
    return srtp_context(tx_srtp), sendto, pair.remote_addr, tx_srtp


def route_dtls_fallback(
    dtls: RTCDtlsTransport,
    owner: object,
    on_rtp: Callable[[bytes, int], Coroutine[Any, Any, None]],
    on_rtcp: Callable[[bytes], Coroutine[Any, Any, None]],
) -> None:
    """Plaintext RTP/RTCP that still went through aiortc's queue (a socket we did not hook)
    goes to ``on_rtp`` / ``on_rtcp`` instead of aiortc's receivers. Once per transport and owner."""
    if getattr(dtls, _MARK, None) is owner:
        return
    setattr(dtls, _MARK, owner)
    dtls._handle_rtp_data = on_rtp  # type: ignore[method-assign,assignment]
    dtls._handle_rtcp_data = on_rtcp  # type: ignore[method-assign,assignment]


class DatagramSink(Protocol):
    """What :func:`hook_datagrams` feeds: the peer's wire counters and its delivery methods."""

    bytes_received: int
    packets_received: int
    bytes_sent: int
    packets_sent: int
    srtp_errors: int

    def _deliver_rtp(self, plain: bytes) -> None: ...

    def _deliver_rtcp(self, plain: bytes) -> None: ...


def hook_datagrams(protocol: Any, dtls: RTCDtlsTransport, peer: DatagramSink) -> None:
    """Take over one aioice socket (``StunProtocol``): SRTP/SRTCP (first byte 128-191) is
    unprotected synchronously with the DTLS transport's receive session and delivered to
    ``peer``; STUN, DTLS and the rest go to aioice's original method. Every datagram either way
    is counted. Once per socket and peer.

    This closure is the receive fast path, so it reads the DTLS session directly rather than
    through a function (one attribute lookup per datagram, as before the split)."""
    if getattr(protocol, _MARK, None) is peer:
        return
    setattr(protocol, _MARK, peer)
    original_received = protocol.datagram_received
    original_send_data = protocol.send_data

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


# --------------------------------------------------------------------------- aioice connections

def ice_connection(transport: RTCIceTransport) -> Connection:
    """The aioice ``Connection`` an ``RTCIceTransport`` currently reads and writes."""
    return transport._connection


def connection_protocols(transport: RTCIceTransport) -> list[Any]:
    """The sockets of the transport's current connection."""
    return list(transport._connection._protocols)


def nominated_pairs(connection: Connection) -> list[Any]:
    return list(connection._nominated.values())


def replace_consent_check(connection: Connection, query_consent: Callable[[Connection], Awaitable[None]]) -> None:
    """Run ``query_consent(connection)`` as the connection's consent task (bound as a method, so
    ``MediaPeer.close`` reaps it). Before ``connect()`` starts that task; idempotent."""
    if not getattr(connection, _CONSENT_MARK, False):
        setattr(connection, _CONSENT_MARK, True)
        connection.query_consent = types.MethodType(query_consent, connection)  # type: ignore[method-assign]


def forget_consent_task(connection: Connection) -> None:
    """Consent expired inside the task itself: ``close()`` must not cancel and await it."""
    connection._query_consent_task = None


def on_check_complete(connection: Connection, owner: object, callback: Callable[[], None]) -> None:
    """``callback()`` after aioice's ``check_complete`` (where a controlling remote's later
    nomination is adopted). Once per connection and owner."""
    if getattr(connection, _NOMINATION_MARK, None) is owner:
        return
    setattr(connection, _NOMINATION_MARK, owner)
    original = connection.check_complete

    def check_complete(pair: Any) -> None:
        original(pair)
        callback()

    connection.check_complete = check_complete  # type: ignore[method-assign]


def connection_like(old: Connection) -> Connection:
    """A fresh ``Connection`` (new credentials and sockets) with the same role and settings."""
    return Connection(
        ice_controlling=old.ice_controlling,
        components=len(old._components) or 1,
        stun_server=old.stun_server,
        turn_server=old.turn_server,
        turn_username=old.turn_username,
        turn_password=old.turn_password,
        turn_ssl=old.turn_ssl,
        turn_transport=old.turn_transport,
        use_ipv4=old._use_ipv4,
        use_ipv6=old._use_ipv6,
        transport_policy=old._transport_policy,
    )


def connection_queue(connection: Connection) -> asyncio.Queue[tuple[bytes, int] | None]:
    """The queue ``Connection.recv()`` reads (``None`` wakes a reader to see the close)."""
    return connection._queue


def redirect_connection_data(connection: Connection, data_received: Callable[[bytes, int], None]) -> None:
    """Non-STUN datagrams of this connection's sockets go to ``data_received`` instead of its queue."""
    connection.data_received = data_received  # type: ignore[method-assign,assignment]


def keep_connection_data(connection: Connection) -> None:
    """Undo :func:`redirect_connection_data`: back to the connection's own queue."""
    if "data_received" in vars(connection):
        del connection.data_received


def route_ice_io(
    transport: RTCIceTransport,
    recv: Callable[[], Coroutine[Any, Any, bytes]],
    send: Callable[[bytes], Coroutine[Any, Any, None]],
) -> None:
    """DTLS reads and writes through ``recv``/``send`` instead of the transport's connection."""
    transport._recv = recv
    transport._send = send  # type: ignore[assignment]  # (aiortc types _send as a bound method)


def switch_ice_connection(transport: RTCIceTransport, connection: Connection, *, gathering: bool = False) -> None:
    """Make ``connection`` the transport's and its gatherer's (the next local description
    advertises it, remote candidates go to it); ``gathering`` also reopens remote trickle."""
    transport._connection = connection
    transport.iceGatherer._connection = connection
    if gathering:
        transport.iceGatherer._remote_candidates_end = False


def watch_ice_connection(transport: RTCIceTransport, connection: Connection) -> None:
    """aiortc's state monitor waits on one connection's events; restart it on ``connection``."""
    name = "_RTCIceTransport__monitor_task"
    old_task: asyncio.Future[None] | None = getattr(transport, name, None)
    if old_task is not None and not old_task.done():
        old_task.cancel()
    transport._connection = connection
    setattr(transport, name, asyncio.ensure_future(transport._monitor()))
