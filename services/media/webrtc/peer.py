"""``MediaPeer``: one aiortc ``RTCPeerConnection`` reduced to what an RTP-level SFU needs, and
its lifecycle: negotiation, outgoing m-lines, data channels, hooks, close.

aiortc keeps doing signalling (SDP), ICE (aioice), the DTLS handshake, SRTP keying, SCTP data
channels. Media bypasses its RTP stack entirely:

* receive: every host socket of the connection is hooked (``aiortc_compat.hook_datagrams``):
  SRTP/SRTCP is unprotected synchronously in the socket callback and handed to ``on_rtp`` /
  ``on_rtcp`` as plaintext bytes (fast_path.py); STUN, DTLS and everything else goes to aioice.
  aiortc's receivers never start (no decoder thread, no RR task); the DTLS transport's own
  RTP/RTCP handlers are redirected too, as a fallback for datagrams that still take aioice's
  queue.
* send: libsrtp protect + ``sendto`` to the nominated pair, no await (fast_path.py). Outgoing
  m-lines are sendonly transceivers whose track never yields (outgoing_track.py), so aiortc's
  sender loop sleeps; Sender Reports come from one timer per event loop (sender_reports.py).

Every datagram is counted (``bytes_sent``/``bytes_received``...: UDP payload bytes on the wire,
i.e. after SRTP, including STUN/DTLS/SCTP) from the moment the local description is set.

``aiortc_compat.install()`` must have run before the first peer (the media node does it at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aioice import Connection
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCConfiguration
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.sdp import candidate_from_sdp

from shared.errors import MediaError

from . import aiortc_compat, consent
from .fast_path import FastPath
from .ice import rtc_configuration
from .ice_restart import IceSwitch
from .outgoing_track import NullTrack, OutgoingTrack, codec_preferences
from .sdp import (
    REPAIRED_RID_URI,
    RID_URI,
    MediaSection,
    munge_publisher_answer,
    parse_sdp,
    remove_extmaps,
    strip_inactive_msids,
)
from .sender_reports import SenderReportClock

__all__ = [
    "MediaPeer",
    "MediaPeerClosedError",
    "MediaPeerError",
    "MediaPeerTimeoutError",
    "NullTrack",
    "OutgoingTrack",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
StateCallback = Callable[[str], None]


class MediaPeerError(MediaError):
    """A negotiation step failed; the peer has been closed."""


class MediaPeerTimeoutError(MediaPeerError, TimeoutError):
    """A negotiation step missed its deadline; the peer has been closed."""


class MediaPeerClosedError(MediaPeerError):
    """The peer is closed."""


class MediaPeer(FastPath):
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

    _open_peers = 0

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
        FastPath.__init__(self)  # callbacks, wire counters, send/receive state
        self._state_callbacks: list[StateCallback] = []
        self._state_callback: StateCallback | None = None

        #: m-lines of the last remote description (the client's offer, or its answer)
        self.remote_media: list[MediaSection] = []

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
        if restart and switch is not None:
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
        preferences = codec_preferences(kind, codecs, rtx)
        transceiver = self.pc.addTransceiver(NullTrack(kind, track_id), direction="sendonly")
        if preferences:
            transceiver.setCodecPreferences(preferences)
        if ssrc is None:
            ssrc = self._unused_ssrc()
        if rtx_ssrc is None:
            rtx_ssrc = self._unused_ssrc(exclude=ssrc)
        aiortc_compat.set_sender_ssrcs(transceiver, stream_id, ssrc, rtx_ssrc)
        # Sender Reports come from SenderReportClock (one timer), not from a task per sender.
        aiortc_compat.quiet_sender_rtcp(transceiver.sender)
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
        # Removed before any offer carried it: it must not stay behind to take the answer's
        # m-line of the next track added (see aiortc_compat.forget_unoffered_transceiver).
        aiortc_compat.forget_unoffered_transceiver(self.pc, transceiver)
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
            used.update(aiortc_compat.sender_ssrcs(t.sender))
        while True:
            value = random.getrandbits(32)
            if value and value not in used:
                return value

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
            aiortc_compat.silence_receiver(transceiver.receiver, self)

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
            aiortc_compat.route_dtls_fallback(dtls, self, self._fallback_rtp, self._fallback_rtcp)
            for protocol in aiortc_compat.connection_protocols(dtls.transport):
                aiortc_compat.hook_datagrams(protocol, dtls, self)
        self._record_owned()

    def _record_owned(self) -> None:
        """Remember the aiortc/aioice objects of this connection: close() reaps their tasks."""
        objects: list[Any] = [self.pc]
        for transceiver in self.pc.getTransceivers():
            objects += [transceiver, transceiver.sender, transceiver.receiver]
        if self.pc.sctp is not None:
            objects.append(self.pc.sctp)
        for dtls in self._dtls_transports():
            objects += [dtls, dtls.transport, aiortc_compat.ice_connection(dtls.transport)]
        for ice in aiortc_compat.ice_transports(self.pc):
            connection = aiortc_compat.ice_connection(ice)
            objects += [ice, connection]
            consent.install(connection)
            self._follow_nomination(connection)
        known = {id(obj) for obj in self._owned}
        for obj in objects:
            if id(obj) not in known:
                known.add(id(obj))
                self._owned.append(obj)

    def _follow_nomination(self, connection: Connection) -> None:
        """The fast path caches the nominated pair's socket and address; a controlling peer
        (libwebrtc) may nominate another pair later, which aioice adopts in ``check_complete``:
        re-resolve then, or media and RTCP keep going to an address the peer may have pruned."""
        aiortc_compat.on_check_complete(connection, self, self._renominated)

    def _renominated(self) -> None:
        if self._tx is not None and not self._closed:
            self._activate_fast_path()

    def _all_protocols(self) -> list[Any]:
        protocols: list[Any] = []
        for obj in self._owned:
            for protocol in aiortc_compat.protocols_of(obj):
                if protocol not in protocols:
                    protocols.append(protocol)
        return protocols

    def _activate_fast_path(self) -> None:
        if self._closed:
            return
        for dtls in self._dtls_transports():
            send_path = aiortc_compat.send_path(dtls)
            if send_path is None:
                continue
            self._install_hooks()
            self._tx = send_path
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

        for ice in aiortc_compat.ice_transports(self.pc):
            if (switch := IceSwitch.installed_on(ice)) is not None:
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
            aiortc_compat.release_close_waiters(self.pc)

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


