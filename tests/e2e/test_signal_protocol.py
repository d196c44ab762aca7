"""The signalling protocol on the wire, checked frame by frame with a raw WebSocket client:
what LiveKit's clients require of the first frames."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
import websockets
from livekit.protocol import models, rtc

from .conftest import DevServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


class Frames:
    """Every frame the server sent, so waiting for one kind never loses another."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.seen: list[rtc.SignalResponse] = []

    async def receive(self, kind: str, timeout: float = 5) -> rtc.SignalResponse:
        for response in self.seen:
            if response.WhichOneof("message") == kind:
                self.seen.remove(response)
                return response
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic()))
            assert isinstance(raw, bytes), "server frames must be binary protobuf"
            response = rtc.SignalResponse.FromString(raw)
            if response.WhichOneof("message") == kind:
                return response
            self.seen.append(response)
        raise AssertionError(f"no {kind} within {timeout}s")


async def test_join_frames_as_clients_need_them(dev_server: DevServer) -> None:
    url = f"{dev_server.url}/rtc?access_token={dev_server.token('raw', 'proto-room')}&protocol=17&sdk=js"
    async with websockets.connect(url) as ws:
        first = rtc.SignalResponse.FromString(await asyncio.wait_for(ws.recv(), 5))
        assert first.WhichOneof("message") == "join", "JoinResponse must be the first frame"
        frames = Frames(ws)
        receive = frames.receive
        join = first.join
        assert join.participant.sid.startswith("PA_") and join.participant.identity == "raw"
        assert join.room.sid.startswith("RM_") and join.room.name == "proto-room"
        assert re.fullmatch(r"\d+\.\d+\.\d+", join.server_info.version)
        assert tuple(map(int, join.server_info.version.split("."))) >= (1, 8, 0)
        assert join.ping_interval > 0 and join.ping_timeout > 0
        assert join.participant.permission.can_publish and join.participant.permission.can_subscribe
        assert join.subscriber_primary

        offer = await receive("offer")
        assert offer.offer.type == "offer" and offer.offer.id >= 1
        assert "m=application" in offer.offer.sdp and "webrtc-datachannel" in offer.offer.sdp

        refresh = await receive("refresh_token")
        assert refresh.refresh_token.count(".") == 2

        await ws.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=1234, rtt=0)).SerializeToString())
        pong = await receive("pong_resp")
        assert pong.pong_resp.last_ping_timestamp == 1234 and pong.pong_resp.timestamp > 0
        await ws.send(rtc.SignalRequest(ping=42).SerializeToString())
        legacy = await receive("pong")
        assert legacy.pong > 1_600_000_000_000  # milliseconds, not nanoseconds

        quality = await receive("connection_quality", timeout=5)
        mine = [u for u in quality.connection_quality.updates if u.participant_sid == join.participant.sid]
        assert mine and mine[0].quality != models.ConnectionQuality.LOST

        await ws.send(rtc.SignalRequest(leave=rtc.LeaveRequest(
            reason=models.DisconnectReason.CLIENT_INITIATED)).SerializeToString())


async def test_resume_is_answered_with_a_full_reconnect(dev_server: DevServer) -> None:
    url = (f"{dev_server.url}/rtc?access_token={dev_server.token('resumer', 'proto-room')}"
           "&reconnect=1&sid=PA_unknown&reconnect_reason=1")
    async with websockets.connect(url) as ws:
        first = rtc.SignalResponse.FromString(await asyncio.wait_for(ws.recv(), 5))
        assert first.WhichOneof("message") == "leave"
        assert first.leave.action == rtc.LeaveRequest.Action.RECONNECT and first.leave.can_reconnect
