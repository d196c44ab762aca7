"""Hostile and broken input against `meshrtc dev`: the server answers it (or drops that one client)
and keeps serving everyone else.

A raw `websockets` client on `/rtc` sends garbage, text, unknown protobuf fields, an oversized
frame, an offer with only unsupported codecs and malformed trickle candidates. Throughout, a
well-behaved LiveKit SDK participant in the same room keeps receiving a publisher's audio, and a
new SDK participant can still join after each case. Then the HTTP side: token errors on
`/rtc/validate` and the WebSocket upgrade, `/rtc/v1`, and the room coming from the token only.
Last, a client that joined at the start and never connected ICE must be gone from the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets
from google.protobuf.message import DecodeError
from livekit import api, rtc
from livekit.protocol import models
from livekit.protocol import rtc as proto

from .conftest import API_KEY, API_SECRET, DevServer
from .sdk_helpers import (
    Received,
    SyntheticPublisher,
    count_media,
    dev_nats_url,
    media_node_stats,
    publish_synthetic,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]
warnings.filterwarnings("ignore", message=".*HMAC key.*")

ROOM = "bad-input"
SILENT_ROOM = "bad-input-silent"
MAX_FRAME = 1 << 20


# ---- the well-behaved participants that must not notice anything ------------------------------
@dataclass
class Watch:
    server: DevServer
    publisher_room: rtc.Room
    listener: rtc.Room
    publisher: SyntheticPublisher
    received: Received
    listener_events: list[str] = field(default_factory=list)
    newcomers: int = 0

    async def assert_serving(self, case: str) -> None:
        """The listener is still connected and still decodes the publisher's audio; a new SDK
        participant can join the room and subscribe to it."""
        before = self.received.audio_frames
        grew = await wait_for(lambda: self.received.audio_frames >= before + 100, 15)  # 10 ms frames
        assert grew, f"{case}: listener audio stalled at {self.received.audio_frames} frames"
        assert self.listener.connection_state == rtc.ConnectionState.CONN_CONNECTED, case
        assert not self.listener_events, f"{case}: listener saw {self.listener_events}"
        assert "publisher" in self.listener.remote_participants, case

        self.newcomers += 1
        newcomer = rtc.Room()
        try:
            identity = f"newcomer-{self.newcomers}"
            try:
                await newcomer.connect(self.server.url, self.server.token(identity, ROOM))
            except rtc.ConnectError as exc:  # e.g. "wait_pc_connection timed out" on a saturated machine
                print(f"  {case}: newcomer connect failed ({exc}); retrying once")
                newcomer = rtc.Room()
                await newcomer.connect(self.server.url, self.server.token(identity, ROOM))
            joined = await wait_for(lambda: "publisher" in newcomer.remote_participants and any(
                p.subscribed and p.track is not None
                for p in newcomer.remote_participants["publisher"].track_publications.values()), 20)
            assert joined, f"{case}: a new participant could not join and subscribe afterwards"
        finally:
            await newcomer.disconnect()
        print(f"  {case}: listener +{self.received.audio_frames - before} audio frames, newcomer joined")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def watch(dev_server: DevServer) -> AsyncIterator[Watch]:
    publisher_room, listener = rtc.Room(), rtc.Room()
    received = Received()
    count_media(listener, received)
    publisher: SyntheticPublisher | None = None
    try:
        await listener.connect(dev_server.url, dev_server.token("listener", ROOM))
        await publisher_room.connect(dev_server.url, dev_server.token("publisher", ROOM))
        publisher = await publish_synthetic(publisher_room, video=False)
        assert await wait_for(lambda: received.audio_frames > 50, 30), "listener never received audio"
        w = Watch(dev_server, publisher_room, listener, publisher, received)
        for name in ("disconnected", "reconnecting"):
            listener.on(name, lambda *args, name=name: w.listener_events.append(f"{name} {args}"))
        yield w
    finally:
        if publisher is not None:
            await publisher.stop()
        for task in received.tasks:
            task.cancel()
        await listener.disconnect()
        await publisher_room.disconnect()


# ---- a raw /rtc client ---------------------------------------------------------------------------
class RawClient:
    def __init__(self, ws: websockets.ClientConnection, identity: str) -> None:
        self.ws = ws
        self.identity = identity
        self.frames: list[proto.SignalResponse] = []
        self.close_code: int | None = None
        self.close_reason = ""

    @classmethod
    async def connect(cls, server: DevServer, identity: str, token: str | None = None,
                      extra_query: str = "") -> RawClient:
        token = token or server.token(identity, ROOM)
        ws = await websockets.connect(
            f"{server.url}/rtc?access_token={token}&protocol=15&sdk=python&auto_subscribe=1{extra_query}",
            max_size=None, compression=None)
        client = cls(ws, identity)
        first = await client.next_frame(10)
        assert first is not None and first.WhichOneof("message") == "join", first
        return client

    async def next_frame(self, timeout: float) -> proto.SignalResponse | None:
        """The next signal frame, or None on timeout or once the server closed the connection."""
        try:
            data = await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError:
            return None
        except websockets.ConnectionClosed as exc:
            if exc.rcvd is not None:
                self.close_code, self.close_reason = exc.rcvd.code, exc.rcvd.reason
            elif self.close_code is None:
                self.close_code = 1006
            return None
        assert isinstance(data, bytes), f"server sent a text frame: {data!r}"
        frame = proto.SignalResponse.FromString(data)
        self.frames.append(frame)
        return frame

    async def drain(self, seconds: float) -> list[proto.SignalResponse]:
        """Everything the server sends within `seconds` (stops early when it closes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        out = []
        while self.close_code is None and (left := deadline - loop.time()) > 0:
            frame = await self.next_frame(left)
            if frame is not None:
                out.append(frame)
        return out

    async def wait_for_kind(self, kinds: set[str], timeout: float) -> proto.SignalResponse | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.close_code is None and (left := deadline - loop.time()) > 0:
            frame = await self.next_frame(left)
            if frame is not None and frame.WhichOneof("message") in kinds:
                return frame
        return None

    async def send(self, request: proto.SignalRequest) -> None:
        await self.ws.send(request.SerializeToString())

    async def is_served(self) -> bool:
        """The signal connection still answers a ping_req (and so was not dropped)."""
        if self.close_code is not None:
            return False
        stamp = int(time.time() * 1000)
        try:
            await self.send(proto.SignalRequest(ping_req=proto.Ping(timestamp=stamp)))
        except websockets.ConnectionClosed:
            return False
        pong = await self.wait_for_kind({"pong_resp"}, 10)
        return pong is not None and pong.pong_resp.last_ping_timestamp == stamp

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


async def on_node(server: DevServer, identity: str) -> bool:
    stats: dict[str, Any] = await media_node_stats(dev_nats_url(server.log()))
    return identity in stats["rooms"].get(ROOM, [])


async def gone_from_node(server: DevServer, identity: str, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await on_node(server, identity):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.25)
    return True


def unknown_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field with a number SignalRequest does not define."""

    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(payload)) + payload


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def silent_client(dev_server: DevServer) -> AsyncIterator[RawClient]:
    """Joins when the module starts, then neither answers nor connects ICE; the node gives up on it
    after its 20 s never-connected deadline, and the last test checks what is left of it."""
    client = await RawClient.connect(dev_server, "silent", token=dev_server.token("silent", SILENT_ROOM))
    try:
        yield client
    finally:
        await client.close()


# ---- the cases -----------------------------------------------------------------------------------
async def test_garbage_binary_frames(dev_server: DevServer, watch: Watch, silent_client: RawClient) -> None:
    # (silent_client only starts its clock here; it is checked by the last test of the module)
    rng = random.Random(20240611)
    garbage: list[bytes] = []
    while len(garbage) < 50:
        blob = rng.randbytes(rng.randint(1, 4000))
        try:
            proto.SignalRequest.FromString(blob)
        except DecodeError:
            garbage.append(blob)  # only bytes that are not a SignalRequest at all
    client = await RawClient.connect(dev_server, "raw-garbage")
    try:
        for blob in garbage:
            await client.ws.send(blob)
        assert await client.is_served(), f"connection dropped after garbage: {client.close_code}"
        assert await on_node(dev_server, "raw-garbage")
        await watch.assert_serving("garbage binary frames")
    finally:
        await client.close()


async def test_text_frames(dev_server: DevServer, watch: Watch) -> None:
    client = await RawClient.connect(dev_server, "raw-text")
    try:
        for text in ("hello", json.dumps({"offer": {"sdp": "v=0", "type": "offer"}}), "\x00" * 100, "é" * 1000):
            await client.ws.send(text)
        assert await client.is_served(), f"connection dropped after text frames: {client.close_code}"
        assert await on_node(dev_server, "raw-text")
        await watch.assert_serving("text frames")
    finally:
        await client.close()


async def test_unknown_oneof_field(dev_server: DevServer, watch: Watch) -> None:
    client = await RawClient.connect(dev_server, "raw-unknown")
    try:
        frames = [
            unknown_field(99, b"\x08\x01"),  # a message case from some future protocol
            unknown_field(536870911, b"x" * 64),  # the largest field number protobuf allows
            unknown_field(99, b""),
            b"\xa0\x06\x01",  # field 100 as a varint
            proto.SignalRequest(ping=1).SerializeToString() + unknown_field(12345, b"future"),  # known + unknown
        ]
        for frame in frames:
            assert proto.SignalRequest.FromString(frame) is not None  # valid protobuf, unknown content
            await client.ws.send(frame)
        assert await client.is_served(), f"connection dropped after unknown fields: {client.close_code}"
        assert await on_node(dev_server, "raw-unknown")
        await watch.assert_serving("unknown protobuf fields")
    finally:
        await client.close()


async def test_oversized_frame_closes_only_that_connection(dev_server: DevServer, watch: Watch) -> None:
    client = await RawClient.connect(dev_server, "raw-big")
    try:
        # Just below the limit is still a frame (an unknown field: ignored).
        near = unknown_field(77, b"\x00" * (MAX_FRAME - 16))
        assert len(near) <= MAX_FRAME
        await client.ws.send(near)
        assert await client.is_served(), f"a {len(near)}-byte frame was refused: {client.close_code}"

        await client.ws.send(os.urandom(MAX_FRAME + 1))
        await client.drain(10)
        print(f"\n  oversized frame: close {client.close_code} {client.close_reason!r}")
        assert client.close_code == 1009, (client.close_code, client.close_reason)
        assert await gone_from_node(dev_server, "raw-big", 10), "session of the closed client lingers"
        await watch.assert_serving("oversized frame")
    finally:
        await client.close()


UNSUPPORTED_OFFER = """v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
a=msid-semantic:WMS *
m=video 9 UDP/TLS/RTP/SAVPF 45 49
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:Xq3b
a=ice-pwd:u0Nh6Yf2cXbdH3Kp9sLm4WvZ
a=ice-options:trickle
a=fingerprint:sha-256 {fingerprint}
a=setup:actpass
a=mid:0
a=sendonly
a=msid:stream-1 track-av1
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:45 AV1/90000
a=rtcp-fb:45 nack
a=rtpmap:49 H265/90000
a=rtcp-fb:49 nack
a=ssrc:2231627014 cname:raw
a=ssrc:2231627014 msid:stream-1 track-av1
"""


async def test_offer_with_only_unsupported_codecs(dev_server: DevServer, watch: Watch) -> None:
    client = await RawClient.connect(dev_server, "raw-codec")
    try:
        await client.send(proto.SignalRequest(add_track=proto.AddTrackRequest(
            cid="track-av1", name="camera", type=models.TrackType.VIDEO, source=models.TrackSource.CAMERA,
            width=640, height=360)))
        fingerprint = ":".join(f"{b:02X}" for b in os.urandom(32))
        sdp = UNSUPPORTED_OFFER.format(fingerprint=fingerprint).replace("\n", "\r\n")
        await client.send(proto.SignalRequest(offer=proto.SessionDescription(type="offer", sdp=sdp, id=1)))
        reply = await client.wait_for_kind({"answer", "leave", "request_response", "error_response"}, 15)
        kind = reply.WhichOneof("message") if reply is not None else f"nothing (close {client.close_code})"
        print(f"\n  AV1/H265-only offer -> {kind}: {reply}")
        assert reply is not None, f"no answer, error or leave; connection close code {client.close_code}"
        if kind == "answer":
            answer = reply.answer.sdp
            rtpmaps = [line for line in answer.splitlines() if line.startswith("a=rtpmap:")]
            assert not any("AV1" in line or "H265" in line for line in rtpmaps), answer
            assert reply.answer.id == 1
        await watch.assert_serving("offer with only AV1/H265")
    finally:
        await client.close()


async def test_repeated_answer_is_ignored(dev_server: DevServer, watch: Watch) -> None:
    """The client answers the subscriber offer twice (the server sends an unanswered offer again
    after a bus outage, and a client that had it answers again): the second answer is dropped,
    not applied to a stable PeerConnection or to the next offer (here the one adding the room's
    audio track, sent as soon as the first answer arrives), which would fail and close a healthy
    session."""
    from aiortc import RTCPeerConnection, RTCSessionDescription

    client = await RawClient.connect(dev_server, "raw-twice")
    pc = RTCPeerConnection()
    try:
        offer = await client.wait_for_kind({"offer"}, 15)
        assert offer is not None, "no subscriber offer"
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.offer.sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = proto.SignalRequest(answer=proto.SessionDescription(
            type="answer", sdp=pc.localDescription.sdp, id=offer.offer.id))
        await client.send(answer)
        await asyncio.sleep(0.5)
        await client.send(answer)
        await asyncio.sleep(1)
        assert await client.is_served(), f"signal connection closed ({client.close_code})"
        assert await on_node(dev_server, "raw-twice"), "the session was closed by the second answer"
        assert re.search(rf"answer {offer.offer.id} ignored \(offer outstanding: (none|\d+)\)", dev_server.log())
        await watch.assert_serving("answer sent twice")
    finally:
        await pc.close()
        await client.close()


NOT_JSON = ("{not json", "", "\xff\xfe", '{"candidate": "candidate:1 1 udp', "null")
# Well-formed JSON that is not a usable candidate.
BAD_CANDIDATES = (json.dumps({"candidate": "candidate:garbage", "sdpMid": "0", "sdpMLineIndex": 0}),
                  '{"candidate": 5}', "[1, 2]", "42")


async def test_malformed_trickle_candidates(dev_server: DevServer, watch: Watch) -> None:
    client = await RawClient.connect(dev_server, "raw-trickle")
    try:
        for target in (proto.SignalTarget.PUBLISHER, proto.SignalTarget.SUBSCRIBER):
            for candidate in NOT_JSON:
                await client.send(proto.SignalRequest(trickle=proto.TrickleRequest(
                    candidateInit=candidate, target=target)))
        assert await client.is_served(), f"connection dropped after malformed JSON: {client.close_code}"
        assert await on_node(dev_server, "raw-trickle"), "session dropped after trickle that is not JSON"

        # JSON that is no candidate: ignored (test_bad_candidate_is_ignored checks each one); nobody
        # else may notice either way.
        for candidate in BAD_CANDIDATES:
            await client.send(proto.SignalRequest(trickle=proto.TrickleRequest(
                candidateInit=candidate, target=proto.SignalTarget.PUBLISHER)))
        await client.drain(2)
        if client.close_code is not None:
            assert any(f.WhichOneof("message") == "leave" for f in client.frames), client.frames[-3:]
        fate = f"dropped, close {client.close_code}" if client.close_code is not None else "kept"
        print(f"\n  bad candidates: client {fate}")
        await watch.assert_serving("malformed trickle candidates")
    finally:
        await client.close()


@pytest.mark.parametrize("candidate", BAD_CANDIDATES)
async def test_bad_candidate_is_ignored(dev_server: DevServer, watch: Watch, candidate: str) -> None:
    identity = f"raw-candidate-{BAD_CANDIDATES.index(candidate)}"
    client = await RawClient.connect(dev_server, identity)
    try:
        await client.send(proto.SignalRequest(trickle=proto.TrickleRequest(
            candidateInit=candidate, target=proto.SignalTarget.PUBLISHER)))
        await client.drain(2)
        assert client.close_code is None, f"dropped: {client.close_code}; last frames {client.frames[-2:]}"
        assert await client.is_served()
        assert await on_node(dev_server, identity)
    finally:
        await client.close()


# ---- HTTP: tokens, /rtc/v1, room from the token only ----------------------------------------------
def token(identity: str = "http-user", room: str = ROOM, key: str = API_KEY, secret: str = API_SECRET,
          ttl: timedelta | None = None, **grants: Any) -> str:
    video = api.VideoGrants(**{"room_join": True, "room": room, **grants})
    builder = api.AccessToken(key, secret).with_identity(identity).with_grants(video)
    if ttl is not None:
        builder = builder.with_ttl(ttl)
    return builder.to_jwt()


BAD_TOKENS = {
    "malformed": ("not.a.jwt", None),
    "unknown key": (token(key="APIunknown", secret="some-other-secret-of-enough-length"), "invalid API key"),
    "wrong secret": (token(secret="not-the-dev-secret"), None),
    "expired": (token(ttl=timedelta(seconds=-120)), "expired"),
    "no roomJoin": (token(room_join=False), None),
}


async def expect_ws_refused(server: DevServer, path: str) -> int:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(f"{server.url}{path}", open_timeout=10):
            pass
    return info.value.response.status_code


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_tokens_are_401(dev_server: DevServer, case: str) -> None:
    bad, message = BAD_TOKENS[case]
    async with httpx.AsyncClient(base_url=dev_server.http_url, timeout=10) as http:
        by_query = await http.get("/rtc/validate", params={"access_token": bad})
        by_header = await http.get("/rtc/validate", headers={"Authorization": f"Bearer {bad}"})
    for response in (by_query, by_header):
        assert response.status_code == 401, (case, response.status_code, response.text)
        assert response.headers["content-type"].startswith("text/plain"), response.headers
        assert response.text.strip(), f"{case}: empty 401 body"
        if message:
            assert message in response.text, (case, response.text)
    assert await expect_ws_refused(dev_server, f"/rtc?access_token={bad}&protocol=15") == 401, case
    print(f"  {case}: 401 {by_query.text!r}")


async def test_missing_token_is_401(dev_server: DevServer) -> None:
    async with httpx.AsyncClient(base_url=dev_server.http_url, timeout=10) as http:
        response = await http.get("/rtc/validate")
        empty = await http.get("/rtc/validate", params={"access_token": ""})
    for r in (response, empty):
        assert r.status_code == 401, (r.status_code, r.text)
        assert r.text.strip()
    assert await expect_ws_refused(dev_server, "/rtc?protocol=15") == 401


async def test_good_token_validates(dev_server: DevServer) -> None:
    async with httpx.AsyncClient(base_url=dev_server.http_url, timeout=10) as http:
        response = await http.get("/rtc/validate", params={"access_token": token()})
    assert response.status_code == 200, response.text


async def test_rtc_v1_is_404(dev_server: DevServer) -> None:
    good = token()
    assert await expect_ws_refused(dev_server, f"/rtc/v1?access_token={good}") == 404
    async with httpx.AsyncClient(base_url=dev_server.http_url, timeout=10) as http:
        for headers in ({}, {"Origin": "https://app.example"}):
            response = await http.get("/rtc/v1/validate", params={"access_token": good}, headers=headers)
            assert response.status_code == 404, response.text
            assert response.headers.get("access-control-allow-origin") == "*", response.headers


async def test_room_comes_from_the_token_only(dev_server: DevServer) -> None:
    """A token for room "other"; the client asks for room "x" in every way a query could."""
    other = token("room-hopper", room="other")
    query = "&room=x&roomName=x&room_name=x"
    async with httpx.AsyncClient(base_url=dev_server.http_url, timeout=10) as http:
        response = await http.get(f"/rtc/validate?access_token={other}{query}")
    assert response.status_code == 200, response.text

    ws = await websockets.connect(f"{dev_server.url}/rtc?access_token={other}&protocol=15{query}",
                                  max_size=None, compression=None)
    client = RawClient(ws, "room-hopper")
    try:
        join = await client.next_frame(10)
        assert join is not None and join.WhichOneof("message") == "join", join
        assert join.join.room.name == "other", join.join.room
        stats: dict[str, Any] = await media_node_stats(dev_nats_url(dev_server.log()))
        assert "room-hopper" in stats["rooms"].get("other", []), stats["rooms"]
        assert "room-hopper" not in stats["rooms"].get("x", []), stats["rooms"]
    finally:
        await client.close()


# ---- last: the client that joined at the start and never connected ----------------------------------
async def test_never_connected_client_leaves_no_residue(dev_server: DevServer, silent_client: RawClient) -> None:
    assert silent_client.frames and silent_client.frames[0].WhichOneof("message") == "join"
    sid = silent_client.frames[0].join.participant.sid
    leave = await silent_client.wait_for_kind({"leave"}, 30)
    assert leave is not None, f"never released; close code {silent_client.close_code}"
    assert leave.leave.reason == models.DisconnectReason.JOIN_FAILURE, leave
    nats_url = dev_nats_url(dev_server.log())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        stats: dict[str, Any] = await media_node_stats(nats_url)
        gone = sid not in stats.get("subscriptions", {}) and "silent" not in stats["rooms"].get(SILENT_ROOM, [])
        if gone or loop.time() > deadline:
            break
        await asyncio.sleep(0.25)
    print(f"\n  never-connected client {sid}: leave JOIN_FAILURE; node afterwards: sessions={stats['sessions']} "
          f"peers={stats['open_peers']} rooms={stats['rooms']} still holds it: {sid in stats.get('subscriptions', {})}")
    assert gone, f"{sid} is still a session on the node: {stats}"
