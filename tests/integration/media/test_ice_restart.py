"""ICE restart between two MediaPeers on 127.0.0.1 (real UDP, real DTLS/SRTP/SCTP, no mocks).

The "server" is a subscriber-role MediaPeer (it offers); the "client" is a publisher-role
MediaPeer (it answers), so both sides run our restart: the server offers new credentials, the
client sees a new remote ufrag in the offer and restarts too. RTP goes through the server's
synchronous fast path and reliable data through the kept SCTP association while the ICE layer
is replaced underneath.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from services.media.webrtc import IceConfig, MediaPeer, configure_ice, parse_sdp, reset_ice
from services.media.webrtc.ice_restart import IceSwitch

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def loopback_ice() -> object:
    configure_ice(IceConfig(host_addresses=("127.0.0.1",), port_min=41000, port_max=41999))
    yield
    reset_ice()


async def wait_for(condition: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def rtp(seq: int) -> bytes:
    return bytes([0x80, 96]) + seq.to_bytes(2, "big") + (seq * 960).to_bytes(4, "big") + \
        (0x1234).to_bytes(4, "big") + b"\x00" * 100


def switch_of(peer: MediaPeer) -> IceSwitch:
    switch = peer._ice_switch()
    assert switch is not None
    return switch


def local_port(peer: MediaPeer) -> int:
    pair = switch_of(peer).active._nominated[1]
    return pair.protocol.local_candidate.port


async def connected_pair() -> tuple[MediaPeer, MediaPeer, list[str], list[str]]:
    server, client = MediaPeer("subscriber", label="server"), MediaPeer("publisher", label="client")
    server_states: list[str] = []
    client_states: list[str] = []
    server.on_state(server_states.append)
    client.on_state(client_states.append)
    server.create_data_channel("_reliable")
    answer = await client.accept_offer(await server.create_offer())
    await server.accept_answer(answer)
    await server.wait_connected(10)
    await client.wait_connected(10)
    await wait_for(lambda: "_reliable" in client.data_channels and server.send_data("_reliable", b"hello"), 10,
                   "data channel open")
    return server, client, server_states, client_states


async def test_restart_moves_media_and_data_to_new_connection_without_gap() -> None:
    server, client, server_states, client_states = await connected_pair()
    arrivals: list[tuple[int, float]] = []
    client.on_rtp = lambda packet: arrivals.append((int.from_bytes(packet[2:4], "big"), time.monotonic()))
    messages: list[bytes] = []
    client.on_data = lambda label, data: messages.append(data)
    try:
        old_server_port, old_client_port = local_port(server), local_port(client)
        old_dtls = server._dtls_transports()[0]
        stop = asyncio.Event()
        sent_data: list[bytes] = []

        async def send_loop() -> None:
            seq = 0
            while not stop.is_set():
                seq += 1
                server.send_rtp(rtp(seq))
                if seq % 5 == 0:
                    payload = f"m{seq}".encode()
                    if server.send_data("_reliable", payload):
                        sent_data.append(payload)
                await asyncio.sleep(0.01)

        sender = asyncio.create_task(send_loop())
        await asyncio.sleep(0.5)
        first_offer = parse_sdp(server.pc.localDescription.sdp)
        offer = await server.create_offer(ice_restart=True)
        assert parse_sdp(offer).ice_ufrag != first_offer.ice_ufrag
        answer = await client.accept_offer(offer)
        assert parse_sdp(answer).ice_ufrag != switch_of(server).active.remote_username
        await server.accept_answer(answer)
        await wait_for(lambda: not switch_of(server).restarting and not switch_of(client).restarting, 15,
                       "both restarts to finish")
        switched_at = time.monotonic()
        await asyncio.sleep(1.0)
        stop.set()
        await sender
        await asyncio.sleep(0.3)

        assert switch_of(server).restarts == 1 and switch_of(client).restarts == 1
        assert local_port(server) != old_server_port and local_port(client) != old_client_port
        assert server._dtls_transports()[0] is old_dtls and old_dtls.state == "connected"
        assert "failed" not in server_states + client_states and server.connected and client.connected
        after = [seq for seq, at in arrivals if at > switched_at + 0.1]
        assert len(after) > 30, "RTP stopped arriving after the switch"
        times = [at for _, at in arrivals]
        worst_gap = max(b - a for a, b in itertools.pairwise(times))
        assert worst_gap < 0.5, f"RTP gap of {worst_gap * 1000:.0f} ms across the restart"
        data = [m for m in messages if m != b"hello"]
        assert data == sent_data, "reliable data lost, doubled or reordered across the restart"
    finally:
        await asyncio.gather(server.close(), client.close())


async def test_restart_that_cannot_connect_fails_the_transport() -> None:
    server, client, server_states, _ = await connected_pair()
    try:
        switch = switch_of(server)
        await switch.begin()
        switch.connect("nobody", "not-the-password-of-anyone", deadline=1.0)
        await wait_for(lambda: "failed" in server_states or "closed" in server_states, 10, "the transport to fail")
        assert not switch.restarting
    finally:
        await asyncio.gather(server.close(), client.close())


async def test_offer_with_unchanged_credentials_is_not_a_restart() -> None:
    server, client, _, _ = await connected_pair()
    try:
        server.add_outgoing("audio", "TR_a", "PA_x")
        answer = await client.accept_offer(await server.create_offer())
        await server.accept_answer(answer)
        assert switch_of(server).restarts == 0 and switch_of(client).restarts == 0
        assert server.connected and client.connected
    finally:
        await asyncio.gather(server.close(), client.close())
