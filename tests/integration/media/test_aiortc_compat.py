"""Contract tests of services/media/webrtc/aiortc_compat.py, one per hook, on real aiortc/aioice
objects (127.0.0.1 UDP where a connection is needed, no mocks).

Each test checks that the private thing the hook relies on still exists and behaves as the hook
assumes, then that after ``install()`` (the package conftest runs it) the hook does its job. A
failure here after a version bump names the hook to fix in aiortc_compat.py.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable

import aioice
import aioice.ice as aioice_ice
import pylibsrtp
import pytest
from aiortc import RTCPeerConnection
from aiortc.codecs import HEADER_EXTENSIONS
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender

from services.media.webrtc import IceConfig, MediaPeer, aiortc_compat, configure_ice, reset_ice, srtp
from services.media.webrtc.lazy_estimator import LazyRemoteBitrateEstimator
from services.media.webrtc.outgoing_track import NullTrack
from services.media.webrtc.sdp import REPAIRED_RID_URI, RID_URI, parse_sdp


@pytest.fixture(autouse=True)
def loopback_ice() -> object:
    configure_ice(IceConfig(host_addresses=("127.0.0.1",)))
    yield
    reset_ice()


async def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[MediaPeer, MediaPeer]]:
    """A connected subscriber (offers) / publisher (answers) pair with one data channel."""
    server, client = MediaPeer("subscriber", label="server"), MediaPeer("publisher", label="client")
    server.create_data_channel("_reliable")
    await server.accept_answer(await client.accept_offer(await server.create_offer()))
    await server.wait_connected(10)
    await client.wait_connected(10)
    yield server, client
    await asyncio.gather(server.close(), client.close())


async def connection_pair() -> tuple[aioice.Connection, aioice.Connection]:
    ours, theirs = aioice.Connection(ice_controlling=True, components=1), aioice.Connection(ice_controlling=False)
    await asyncio.gather(ours.gather_candidates(), theirs.gather_candidates())
    for a, b in ((ours, theirs), (theirs, ours)):
        for candidate in b.local_candidates:
            await a.add_remote_candidate(candidate)
        await a.add_remote_candidate(None)
        a.remote_username, a.remote_password = b.local_username, b.local_password
    return ours, theirs


def dtls_of(peer: MediaPeer) -> RTCDtlsTransport:
    return peer._dtls_transports()[0]


def rtp(seq: int) -> bytes:
    return bytes([0x80, 96]) + seq.to_bytes(2, "big") + (seq * 960).to_bytes(4, "big") + \
        (0x1234).to_bytes(4, "big") + b"\x00" * 100


# --------------------------------------------------------------------------- versions, install


def test_require_pinned_versions_names_found_and_expected() -> None:
    aiortc_compat.require_pinned_versions()  # the installed ones
    with pytest.raises(aiortc_compat.IncompatibleVersionError, match=r"aiortc 1\.17\.0 \(expected 1\.16\.0\)"):
        aiortc_compat.require_pinned_versions({"aiortc": "1.17.0", "aioice": aiortc_compat.PINNED["aioice"]})
    with pytest.raises(aiortc_compat.IncompatibleVersionError, match=r"aioice None \(expected 0\.13\.0\)"):
        aiortc_compat.require_pinned_versions({"aiortc": aiortc_compat.PINNED["aiortc"]})


def test_install_makes_receivers_build_their_estimator_lazily() -> None:
    source = inspect.getsource(RTCRtpReceiver.__init__)
    assert "RemoteBitrateEstimator()" in source  # looked up in the module at construction

    class OpenTransport:  # all RTCRtpReceiver.__init__ reads of its transport
        state = "new"

    aiortc_compat.install()
    aiortc_compat.install()  # idempotent
    assert aiortc_compat.installed()
    receiver = RTCRtpReceiver("video", transport=OpenTransport())  # type: ignore[arg-type]
    estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator  # type: ignore[attr-defined]
    assert isinstance(estimator, LazyRemoteBitrateEstimator) and not estimator.built


async def test_install_registers_rid_extensions_and_aiortc_answers_them() -> None:
    aiortc_compat.install()
    aiortc_compat.install()
    uris = [ext.uri for ext in HEADER_EXTENSIONS["video"]]
    assert uris.count(RID_URI) == 1 and uris.count(REPAIRED_RID_URI) == 1
    assert len({ext.id for ext in HEADER_EXTENSIONS["video"]}) == len(uris)
    offerer = RTCPeerConnection()
    offerer.addTransceiver("video", direction="sendonly")
    await offerer.setLocalDescription(await offerer.createOffer())
    video = next(m for m in parse_sdp(offerer.localDescription.sdp).media if m.kind == "video")
    assert RID_URI in video.extmaps.values()  # aiortc negotiates what the list holds
    await offerer.close()


# --------------------------------------------------------------------------- ICE gathering


async def test_patch_ice_gathering_replaces_both_gathering_steps() -> None:
    reset_ice()
    assert "get_host_addresses(" in inspect.getsource(aioice_ice.Connection)
    assert "self.get_component_candidates(" in inspect.getsource(aioice_ice.Connection.gather_candidates)
    calls: list[str] = []

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        calls.append("hosts")
        return ["127.0.0.1"]

    async def component_candidates(self: aioice.Connection, component: int, addresses: list[str],
                                   timeout: int = 5) -> list[object]:
        calls.append(f"candidates {addresses}")
        return await aiortc_compat.original_get_component_candidates(self, component, addresses, timeout)

    aiortc_compat.patch_ice_gathering(host_addresses, component_candidates)
    try:
        connection = aioice.Connection(ice_controlling=True)
        await connection.gather_candidates()
        assert calls == ["hosts", "candidates ['127.0.0.1']"]
        assert [c.host for c in connection.local_candidates] == ["127.0.0.1"]
        await connection.close()
    finally:
        aiortc_compat.restore_ice_gathering()
    assert aioice_ice.get_host_addresses is not host_addresses
    assert aioice_ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == \
        aiortc_compat.original_get_host_addresses(True, False)


async def test_add_host_protocols_makes_the_connection_own_the_socket() -> None:
    connection = aioice.Connection(ice_controlling=True)
    assert connection._protocols == []
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: aioice_ice.StunProtocol(connection),
                                                              local_addr=("127.0.0.1", 0))
    aiortc_compat.add_host_protocols(connection, [protocol])
    assert aiortc_compat.protocols_of(connection) == [protocol]
    assert aiortc_compat.protocols_of(object()) == []
    await connection.close()  # aioice closes the sockets it owns
    assert transport.is_closing()


# --------------------------------------------------------------------------- peer connection


async def test_peer_connection_private_state() -> None:
    pc = RTCPeerConnection()
    cname = aiortc_compat.peer_cname(pc)
    assert isinstance(cname, str) and cname
    pc.createDataChannel("x")
    await pc.setLocalDescription(await pc.createOffer())
    transports = aiortc_compat.ice_transports(pc)
    assert len(transports) == 1 and isinstance(transports[0], RTCIceTransport)
    # release_close_waiters: close() awaits __isClosed on later calls; resolving it lets them return
    close = asyncio.ensure_future(pc.close())
    await asyncio.sleep(0)
    close.cancel()
    await asyncio.gather(close, return_exceptions=True)
    future = pc._RTCPeerConnection__isClosed  # type: ignore[attr-defined]
    assert isinstance(future, asyncio.Future)
    aiortc_compat.release_close_waiters(pc)
    assert future.done()
    await asyncio.wait_for(pc.close(), 2)


def test_set_track_id_sets_what_id_reads() -> None:
    track = NullTrack("video", "TR_x")
    assert track.id == "TR_x"


async def test_sender_ssrcs_are_what_the_offer_announces() -> None:
    pc = RTCPeerConnection()
    transceiver = pc.addTransceiver(NullTrack("video", "TR_v"), direction="sendonly")
    aiortc_compat.set_sender_ssrcs(transceiver, "PA_stream", 1111, 2222)
    assert aiortc_compat.sender_ssrcs(transceiver.sender) == (1111, 2222)
    assert transceiver.receiver._RTCRtpReceiver__rtcp_ssrc == 1111  # type: ignore[attr-defined]
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    assert "a=msid:PA_stream TR_v" in sdp and "a=ssrc-group:FID 1111 2222" in sdp
    await pc.close()


async def test_negotiated_codecs_and_extensions_after_answer(pair: tuple[MediaPeer, MediaPeer]) -> None:
    server, client = pair
    out = server.add_outgoing("video", "TR_v", "PA_s", codecs=["VP8"])
    await server.accept_answer(await client.accept_offer(await server.create_offer()))
    codecs = aiortc_compat.negotiated_codecs(out.transceiver)
    assert [c.mimeType for c in codecs][:1] == ["video/VP8"] and out.payload_type == codecs[0].payloadType
    extensions = aiortc_compat.negotiated_header_extensions(out.transceiver)
    assert extensions and out.extension_ids == {e.uri: e.id for e in extensions}


async def test_quiet_sender_rtcp_runs_no_reports_and_lets_stop_return() -> None:
    assert "__rtcp_started.set()" in inspect.getsource(RTCRtpSender._run_rtcp)
    assert "__rtcp_exited.wait()" in inspect.getsource(RTCRtpSender.stop)
    pc = RTCPeerConnection()
    sender = pc.addTransceiver(NullTrack("audio", "TR_a"), direction="sendonly").sender
    aiortc_compat.quiet_sender_rtcp(sender)
    task = asyncio.ensure_future(sender._run_rtcp())
    await asyncio.sleep(0)
    assert sender._RTCRtpSender__rtcp_started.is_set()  # type: ignore[attr-defined]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert sender._RTCRtpSender__rtcp_exited.is_set()  # type: ignore[attr-defined]
    await pc.close()


async def test_silence_receiver_starts_no_decoder(pair: tuple[MediaPeer, MediaPeer]) -> None:
    assert "__decoder_thread" in inspect.getsource(RTCRtpReceiver.receive)
    server, client = pair
    server.add_outgoing("video", "TR_v", "PA_s")
    server.add_outgoing("audio", "TR_a", "PA_s")
    await server.accept_answer(await client.accept_offer(await server.create_offer()))
    for peer in pair:
        for transceiver in peer.pc.getTransceivers():
            receiver = transceiver.receiver
            assert receiver._RTCRtpReceiver__decoder_thread is None  # type: ignore[attr-defined]
            assert hasattr(receiver, "_meshrtc_parameters") or transceiver.currentDirection == "sendonly"
    # and on a fresh receiver that aiortc would start: receive() only records its parameters
    pc = RTCPeerConnection()
    receiver = pc.addTransceiver("video", direction="recvonly").receiver
    aiortc_compat.silence_receiver(receiver, pc)
    await receiver.receive("params")  # type: ignore[arg-type]
    assert receiver._meshrtc_parameters == "params"  # type: ignore[attr-defined]
    assert receiver._RTCRtpReceiver__decoder_thread is None  # type: ignore[attr-defined]
    await pc.close()


# --------------------------------------------------------------------------- SRTP, DTLS


def test_srtp_context_and_binding_protect_like_pylibsrtp() -> None:
    key = bytes(range(30))
    ours = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    theirs = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    packet = rtp(7)
    srtp.SCRATCH[:len(packet)] = packet
    size = srtp.protect_in_place(srtp.PROTECT_RTP, aiortc_compat.srtp_context(ours), len(packet))
    assert bytes(srtp.SCRATCH[:size]) == theirs.protect(packet)
    assert aiortc_compat.srtp_ffi is not None and hasattr(aiortc_compat.srtp_lib, "srtp_protect_rtcp")


async def test_send_path_is_the_nominated_socket(pair: tuple[MediaPeer, MediaPeer]) -> None:
    server, client = pair
    dtls = dtls_of(server)
    assert isinstance(dtls._tx_srtp, pylibsrtp.Session)
    path = aiortc_compat.send_path(dtls)
    assert path is not None
    context, sendto, address, session = path
    nominated = aiortc_compat.nominated_pairs(aiortc_compat.ice_connection(dtls.transport))
    assert address == nominated[0].remote_addr and session is dtls._tx_srtp
    assert context == aiortc_compat.srtp_context(session)
    assert getattr(sendto, "__self__", None) is nominated[0].protocol.transport._sock  # the socket itself
    got: list[bytes] = []
    client.on_rtp = got.append
    assert server.send_rtp(rtp(1))
    await wait_for(lambda: got, 5, "the packet")
    assert got == [rtp(1)]


async def test_route_dtls_fallback_takes_aiortc_plaintext_handlers(pair: tuple[MediaPeer, MediaPeer]) -> None:
    assert "self._handle_rtp_data(" in inspect.getsource(RTCDtlsTransport._recv_next)
    assert "self._handle_rtcp_data(" in inspect.getsource(RTCDtlsTransport._recv_next)
    _server, client = pair
    got: list[bytes] = []
    client.on_rtp = got.append
    await dtls_of(client)._handle_rtp_data(rtp(3), 0)  # what aiortc calls after its own unprotect
    assert got == [rtp(3)]


async def test_hook_datagrams_unprotects_on_the_socket(pair: tuple[MediaPeer, MediaPeer]) -> None:
    assert "self._rx_srtp" in inspect.getsource(RTCDtlsTransport._recv_next)
    server, client = pair
    dtls = dtls_of(client)
    assert isinstance(dtls._rx_srtp, pylibsrtp.Session)
    protocols = aiortc_compat.connection_protocols(dtls.transport)
    assert protocols and all(p.datagram_received.__qualname__.startswith("hook_datagrams") for p in protocols)
    got: list[bytes] = []
    client.on_rtp = got.append
    before = client.packets_received
    assert server.send_rtp(rtp(2))
    await wait_for(lambda: got, 5, "the packet")
    assert got == [rtp(2)] and client.packets_received > before
    aiortc_compat.hook_datagrams(protocols[0], dtls, client)  # once per socket and peer
    assert protocols[0].datagram_received.__qualname__.startswith("hook_datagrams")


# --------------------------------------------------------------------------- aioice connections


async def test_replace_consent_check_runs_ours_as_the_consent_task() -> None:
    ours, theirs = await connection_pair()
    ran = asyncio.Event()

    async def query_consent(self: aioice.Connection) -> None:
        assert aiortc_compat.nominated_pairs(self)
        ran.set()
        aiortc_compat.forget_consent_task(self)

    aiortc_compat.replace_consent_check(ours, query_consent)
    await asyncio.gather(ours.connect(), theirs.connect())
    await asyncio.wait_for(ran.wait(), 2)
    assert ours._query_consent_task is None
    await asyncio.gather(ours.close(), theirs.close())


async def test_on_check_complete_follows_nomination() -> None:
    ours, theirs = await connection_pair()
    calls: list[int] = []
    aiortc_compat.on_check_complete(theirs, calls, lambda: calls.append(len(aiortc_compat.nominated_pairs(theirs))))
    aiortc_compat.on_check_complete(theirs, calls, lambda: calls.append(-1))  # once per owner
    await asyncio.gather(ours.connect(), theirs.connect())
    assert calls and -1 not in calls and calls[-1] == 1
    await asyncio.gather(ours.close(), theirs.close())


async def test_connection_like_copies_role_and_settings() -> None:
    old = aioice.Connection(ice_controlling=False, components=1, use_ipv6=False)
    new = aiortc_compat.connection_like(old)
    assert (new.ice_controlling, new._components, new._use_ipv4, new._use_ipv6, new._transport_policy) == \
        (old.ice_controlling, old._components, old._use_ipv4, old._use_ipv6, old._transport_policy)
    assert new.local_username != old.local_username


async def test_connection_queue_is_what_recv_reads() -> None:
    ours, theirs = await connection_pair()
    await asyncio.gather(ours.connect(), theirs.connect())
    aiortc_compat.connection_queue(ours).put_nowait((b"queued", 1))
    assert await asyncio.wait_for(ours.recv(), 1) == b"queued"
    await asyncio.gather(ours.close(), theirs.close())


async def test_redirect_connection_data_takes_non_stun_datagrams() -> None:
    connection = aioice.Connection(ice_controlling=True)
    await connection.gather_candidates()
    protocol = aiortc_compat.protocols_of(connection)[0]
    got: list[tuple[bytes, int]] = []
    aiortc_compat.redirect_connection_data(connection, lambda data, component: got.append((data, component)))
    protocol.datagram_received(b"\x16not stun", ("127.0.0.1", 9))
    assert got == [(b"\x16not stun", 1)]
    aiortc_compat.keep_connection_data(connection)
    protocol.datagram_received(b"\x16again", ("127.0.0.1", 9))
    assert got == [(b"\x16not stun", 1)] and aiortc_compat.connection_queue(connection).qsize() == 1
    await connection.close()


async def test_route_ice_io_is_what_dtls_reads_and_writes(pair: tuple[MediaPeer, MediaPeer]) -> None:
    source = inspect.getsource(RTCDtlsTransport)
    assert "self.transport._recv()" in source and "self.transport._send(" in source
    server, client = pair
    ice = dtls_of(server).transport
    switch = server._ice_switch()
    assert switch is not None and ice._recv == switch.recv and ice._send == switch.send
    got: list[bytes] = []
    client.on_data = lambda label, data: got.append(data)
    await wait_for(lambda: "_reliable" in client.data_channels and server.send_data("_reliable", b"hi"), 10, "dc")
    await wait_for(lambda: got, 5, "the message through the routed recv/send")


async def test_switch_ice_connection_moves_gatherer_and_trickle(pair: tuple[MediaPeer, MediaPeer]) -> None:
    server, _client = pair
    ice = dtls_of(server).transport
    old = aiortc_compat.ice_connection(ice)
    new = aiortc_compat.connection_like(old)
    await new.gather_candidates()
    aiortc_compat.switch_ice_connection(ice, new, gathering=True)
    assert aiortc_compat.ice_connection(ice) is new
    assert ice.iceGatherer.getLocalParameters().usernameFragment == new.local_username
    assert ice.iceGatherer._remote_candidates_end is False
    aiortc_compat.switch_ice_connection(ice, old)
    assert aiortc_compat.ice_connection(ice) is old
    await new.close()


async def test_watch_ice_connection_reports_its_failure(pair: tuple[MediaPeer, MediaPeer]) -> None:
    server, _client = pair
    ice = dtls_of(server).transport
    assert isinstance(ice._RTCIceTransport__monitor_task, asyncio.Future)  # type: ignore[attr-defined]
    old = aiortc_compat.ice_connection(ice)
    replacement = aiortc_compat.connection_like(old)
    await replacement.gather_candidates()
    old_monitor = ice._RTCIceTransport__monitor_task  # type: ignore[attr-defined]
    aiortc_compat.watch_ice_connection(ice, replacement)
    await asyncio.sleep(0)
    assert old_monitor.cancelled() and aiortc_compat.ice_connection(ice) is replacement
    await replacement.close()  # the new monitor sees this connection close
    await wait_for(lambda: ice.state == "failed", 5, "the transport to report failed")


async def test_a_leg_removed_before_any_offer_does_not_take_the_next_leg_s_answer(
        pair: tuple[MediaPeer, MediaPeer]) -> None:
    """aiortc matches each m-line of an answer to the first transceiver of its kind whose mid is
    None or equal, stopped ones included: a leg added and removed between two offers (a track
    that left before the subscriber's offer went out) would take the m-line of the next leg,
    which then never becomes negotiated (its subscriber gets no media)."""
    server, client = pair
    server.add_outgoing("audio", "TR_gone", "PA_old|TR_gone", codecs=["opus"], rtx=False)
    await server.remove_outgoing("TR_gone")
    kept = server.add_outgoing("audio", "TR_kept", "PA_new|TR_kept", codecs=["opus"], rtx=False)
    await server.accept_answer(await client.accept_offer(await server.create_offer()))
    assert kept.negotiated and kept.mid is not None
    assert all(t.mid is not None for t in server.pc.getTransceivers())


async def test_forget_unoffered_transceiver_drops_only_what_no_offer_carried() -> None:
    pc = RTCPeerConnection()
    try:
        unoffered = pc.addTransceiver("audio", direction="sendonly")
        assert aiortc_compat.forget_unoffered_transceiver(pc, unoffered)
        assert unoffered not in pc.getTransceivers()
        offered = pc.addTransceiver("audio", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        assert offered.mid is not None and not aiortc_compat.forget_unoffered_transceiver(pc, offered)
        assert offered in pc.getTransceivers()
    finally:
        await pc.close()
