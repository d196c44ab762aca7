"""`/rtc`: the client's WebSocket, bridged to its session on a media node.

The signal service keeps no media state. It authenticates, asks the room service to admit and
place the participant, opens the session on the chosen media node, and then moves frames:
client frames to `sess.<node>.<sid>.up`, node frames from `sess.client.<sid>.down` to the
client. Pings are answered here, so liveness does not depend on the media node's load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from fastapi import WebSocket, WebSocketDisconnect
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

from shared.auth import Claims, TokenVerifier, mint_token
from shared.bus import Bus, BusTimeout, RemoteError, Subscription
from shared.contracts.control import (
    CLOSE_HEADER,
    CONNECTION_HEADER,
    CloseSession,
    ControlDecodeError,
    OpenSession,
    ResumableAnswer,
    ResumableQuery,
    ResumeSession,
    SessionOpened,
    SessionResumed,
)
from shared.contracts.subjects import (
    media_node_subject,
    session_resume_subject,
    session_to_node_subject,
    session_to_signal_subject,
)

from .admission import HttpError, admit, authenticate, check_join_grants
from .denial import deny
from .handover import BridgeRef, Handover, plan, queries_by_node, shutdown_leave
from .params import ConnectParams, ParamError, parse_connect_params
from .uplink import UpLinks

log = logging.getLogger(__name__)

RESUME_TIMEOUT = 3.0  # seconds to find the node holding a session (clients wait 5 s for the first frame)
REFRESH_EVERY = 300.0  # seconds between refreshed tokens, as LiveKit does
REFRESH_TTL = timedelta(hours=6)
DOWN_QUEUE = 4096  # frames buffered per client before the slowest client is cut loose
RESUMABLE_TIMEOUT = 1.0  # seconds a media node has to say which sessions could resume


@dataclass
class Bridge:
    node_id: str
    connection_id: str
    down: asyncio.Queue[tuple[bytes, str | None]]
    sdk: str = ""


@dataclass
class SignalCounters:
    sessions: int = 0
    resumed: int = 0
    resume_refused: int = 0
    frames_up: int = 0
    frames_down: int = 0
    malformed_frames: int = 0


class RtcEndpoint:
    def __init__(self, bus: Bus, verifier: TokenVerifier, dc: str, node_id: str,
                 api_keys: dict[str, str] | None = None) -> None:
        self.bus = bus
        self.verifier = verifier
        self.api_keys = api_keys or {}
        self.dc = dc
        self.node_id = node_id
        self.counters = SignalCounters()
        self.bridges: dict[str, Bridge] = {}  # live ones, by participant sid
        self.uplinks = UpLinks(bus)  # held while the bus is away (the service wires its hooks)

    def media_node_down(self, node_id: str) -> int:
        """The node hosting these sessions is gone: their clients rejoin in full, and the room
        service places them on a healthy node. Returns how many were told."""
        leave = rtc.SignalResponse(leave=rtc.LeaveRequest(
            can_reconnect=True, reason=models.DisconnectReason.MIGRATION,
            action=rtc.LeaveRequest.Action.RECONNECT)).SerializeToString()
        told = 0
        for bridge in list(self.bridges.values()):
            if bridge.node_id == node_id:
                bridge.down.put_nowait((leave, "node_down"))
                told += 1
        return told

    async def hand_over(self, wait: float) -> Handover:
        """This instance is shutting down (it no longer accepts connections): tell every client
        how to come back (handover.py), then give them up to `wait` seconds to close their
        WebSockets.

        After a leave the WebSocket is left for the client to close: a close right behind the
        leave reaches the Rust core as a second failure, which turns its resume into a full
        rejoin. A client that closes the old WebSocket only after
        resuming elsewhere is harmless: the node ignores CloseSession from a connection the
        session has left."""
        refs = [BridgeRef(sid, bridge.node_id, bridge.connection_id, bridge.sdk)
                for sid, bridge in self.bridges.items()]
        answers = await asyncio.gather(*(self._resumable(node, sessions)
                                         for node, sessions in queries_by_node(refs).items()))
        handover = plan(refs, set().union(*answers))
        messages = [(handover.resume, shutdown_leave(True).SerializeToString(), None),
                    (handover.reconnect, shutdown_leave(False).SerializeToString(), None),
                    (handover.close, b"", "shutdown")]
        for sids, frame, close_reason in messages:
            for sid in sids:
                bridge = self.bridges.get(sid)
                if bridge is not None:
                    with contextlib.suppress(asyncio.QueueFull):
                        bridge.down.put_nowait((frame, close_reason))
        loop = asyncio.get_running_loop()
        started = loop.time()
        while self.bridges and loop.time() - started < wait:
            await asyncio.sleep(0.05)
        log.info("shutting down: %d client(s) told to resume, %d closed to resume (Rust core), %d told to rejoin; "
                 "%d still connected after %.1f s", len(handover.resume), len(handover.close),
                 len(handover.reconnect), len(self.bridges), loop.time() - started)
        return handover

    async def _resumable(self, node_id: str, sessions: dict[str, str]) -> set[str]:
        """The sessions the node would resume; none when it cannot be asked (a node that does
        not answer could not resume them either)."""
        try:
            raw = await self.bus.request(media_node_subject(node_id, "resumable"),
                                         ResumableQuery(sessions=sessions).encode(), timeout=RESUMABLE_TIMEOUT)
            return set(ResumableAnswer.decode(raw).resumable) & set(sessions)
        except (BusTimeout, RemoteError, ControlDecodeError) as exc:
            log.warning("media node %s did not say which sessions can resume (%r): they rejoin", node_id, exc)
            return set()

    # ---- validation shared by /rtc and /rtc/validate --------------------------------------
    def validate(self, authorization: str | None, query: dict[str, str], user_agent: str) -> ConnectParams:
        try:
            params = parse_connect_params(query, user_agent)
        except ParamError as exc:
            raise HttpError(exc.status, exc.message) from None
        claims = authenticate(self.verifier, authorization, query.get("access_token"))
        check_join_grants(claims)
        return params

    async def handle(self, ws: WebSocket) -> None:
        query = dict(ws.query_params)
        address = ws.client.host if ws.client else ""
        try:
            params = parse_connect_params(query, ws.headers.get("user-agent", ""), address)
            claims = authenticate(self.verifier, ws.headers.get("authorization"), query.get("access_token"))
        except ParamError as exc:
            await deny(ws, exc.status, exc.message)
            return
        except HttpError as exc:
            await deny(ws, exc.status, exc.message)
            return

        if params.reconnect:
            await self._resume(ws, params, claims)
            return

        connection_id = uuid.uuid4().hex
        down: asyncio.Queue[tuple[bytes, str | None]] = asyncio.Queue(DOWN_QUEUE)
        participant_sid = ""
        subscription = None
        try:
            admitted = await admit(self.bus, self.dc, self.node_id, claims, params)
            admission = admitted.admission
            participant_sid = admission.participant_sid
            assert admission.room is not None
            subscription = await self.bus.subscribe(session_to_signal_subject(participant_sid),
                                                    self._down_handler(participant_sid, connection_id, down))
            request = admitted.request
            open_msg = OpenSession(
                project=request.project, room=admission.room, participant_sid=participant_sid,
                identity=request.identity, name=request.name, metadata=request.metadata,
                attributes=request.attributes, kind=request.kind, permission=request.permission,
                client=params.client, auto_subscribe=params.auto_subscribe,
                adaptive_stream=params.adaptive_stream, subscriber_allow_pause=params.subscriber_allow_pause,
                signal_node=self.node_id, replaced_sid=admission.replaced_sid,
                token_expires_at=claims.expires_at or 0, connection_id=connection_id,
            )
            try:
                raw = await self.bus.request(media_node_subject(admission.node_id, "open"), open_msg.encode(),
                                             timeout=5.0)
            except (BusTimeout, RemoteError) as exc:
                raise HttpError(503, f"media node unavailable: {exc}") from None
            opened = SessionOpened.decode(raw)
            if not opened.ok:
                raise HttpError(opened.status or 500, opened.error or "session refused")
        except HttpError as exc:
            if subscription is not None:
                await subscription.unsubscribe()
            await deny(ws, exc.status, exc.message)
            return

        await ws.accept()
        await self._bridge(ws, participant_sid, admission.node_id, connection_id, down, subscription, claims,
                           params.client.sdk)

    async def _resume(self, ws: WebSocket, params: ConnectParams, claims: Claims) -> None:
        """`reconnect=1&sid=...`: re-attach the session the media node kept after the client's
        previous WebSocket dropped. The node sends ReconnectResponse first; when no node holds
        a resumable session the client is told to rejoin in full (leave RECONNECT)."""
        try:
            room = check_join_grants(claims)
        except HttpError as exc:
            await deny(ws, exc.status, exc.message)
            return
        sid = params.participant_sid
        connection_id = uuid.uuid4().hex
        down: asyncio.Queue[tuple[bytes, str | None]] = asyncio.Queue(DOWN_QUEUE)
        subscription = None
        resumed: SessionResumed | None = None
        if sid.startswith("PA_"):
            # Subscribed before asking, so the ReconnectResponse the node sends is not missed.
            subscription = await self.bus.subscribe(session_to_signal_subject(sid),
                                                    self._down_handler(sid, connection_id, down))
            request = ResumeSession(participant_sid=sid, project=claims.api_key, room=room, identity=claims.identity,
                                    signal_node=self.node_id, connection_id=connection_id,
                                    reconnect_reason=params.reconnect_reason, token_expires_at=claims.expires_at or 0)
            try:
                resumed = SessionResumed.decode(await self.bus.request(
                    session_resume_subject(sid), request.encode(), timeout=RESUME_TIMEOUT))
            except (BusTimeout, RemoteError, ControlDecodeError):
                resumed = None
        await ws.accept()
        if resumed is None or not resumed.ok or subscription is None:
            self.counters.resume_refused += 1
            log.info("resume of %s refused (%s): full reconnect", sid or "?",
                     resumed.error if resumed else "no node holds it")
            if subscription is not None:
                await subscription.unsubscribe()
            leave = rtc.SignalResponse(leave=rtc.LeaveRequest(
                can_reconnect=True, reason=models.DisconnectReason.STATE_MISMATCH,
                action=rtc.LeaveRequest.Action.RECONNECT))
            with contextlib.suppress(Exception):
                await ws.send_bytes(leave.SerializeToString())
                await ws.close()
            return
        self.counters.resumed += 1
        log.info("session %s resumed through this instance (node %s)", sid, resumed.node_id)
        await self._bridge(ws, sid, resumed.node_id, connection_id, down, subscription, claims, params.client.sdk)

    def _down_handler(self, participant_sid: str, connection_id: str,
                      down: asyncio.Queue[tuple[bytes, str | None]]) -> Callable[[object], Awaitable[None]]:
        async def on_down(msg: object) -> None:
            headers = getattr(msg, "headers", None) or {}
            if headers.get(CONNECTION_HEADER, connection_id) != connection_id:
                return  # for the WebSocket that replaced this one (the client resumed elsewhere)
            try:
                down.put_nowait((msg.data, headers.get(CLOSE_HEADER)))  # type: ignore[attr-defined]
            except asyncio.QueueFull:
                # A client that stops reading must not grow memory without bound: cut it loose.
                log.warning("client %s is not reading; closing its signal connection", participant_sid)
                while not down.empty():
                    down.get_nowait()
                down.put_nowait((b"", "slow_client"))

        return on_down

    async def _bridge(self, ws: WebSocket, participant_sid: str, node_id: str, connection_id: str,
                      down: asyncio.Queue[tuple[bytes, str | None]], subscription: Subscription,
                      claims: Claims, sdk: str = "") -> None:
        """Moves frames until either side ends, then tells the node (which keeps the session
        for a resume unless the client left on purpose)."""
        self.counters.sessions += 1
        self.bridges[participant_sid] = Bridge(node_id, connection_id, down, sdk)
        self.uplinks.open(connection_id, node_id, session_to_node_subject(node_id, participant_sid))
        graceful = False
        sender = asyncio.create_task(self._pump_down(ws, down, claims), name=f"ws-down-{participant_sid}")
        try:
            graceful = await self._pump_up(ws, connection_id, sender)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
            self.counters.sessions -= 1
            bridge = self.bridges.get(participant_sid)
            if bridge is not None and bridge.down is down:
                del self.bridges[participant_sid]
            close = CloseSession(participant_sid=participant_sid, graceful=graceful,
                                 reason="client_leave" if graceful else "signal_closed",
                                 connection_id=connection_id)
            await self.uplinks.close(connection_id, close)
            with contextlib.suppress(Exception):
                await ws.close()

    def refreshed_token(self, claims: Claims) -> bytes | None:
        secret = self.api_keys.get(claims.api_key)
        if not secret:
            return None
        token = mint_token(claims.api_key, secret, claims, ttl=REFRESH_TTL)
        return rtc.SignalResponse(refresh_token=token).SerializeToString()

    async def _pump_down(self, ws: WebSocket, down: asyncio.Queue[tuple[bytes, str | None]], claims: Claims) -> None:
        next_refresh = 0.0
        sent_any = False  # the first refresh follows the JoinResponse, which must come first
        while True:
            try:
                data, close_reason = await asyncio.wait_for(down.get(), timeout=REFRESH_EVERY)
            except TimeoutError:
                data, close_reason = b"", None
            if data:
                await ws.send_bytes(data)
                self.counters.frames_down += 1
                sent_any = True
            if close_reason is not None:
                await ws.close()
                return
            now = time.monotonic()
            if sent_any and now >= next_refresh and (frame := self.refreshed_token(claims)):
                await ws.send_bytes(frame)
                next_refresh = now + REFRESH_EVERY

    async def _pump_up(self, ws: WebSocket, connection_id: str, sender: asyncio.Task[None]) -> bool:
        """Returns True when the client left on purpose (sent `leave`)."""
        receive = asyncio.ensure_future(ws.receive())
        try:
            while True:
                done, _ = await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
                if sender in done:
                    return False
                message = receive.result()
                if message["type"] == "websocket.disconnect":
                    return False
                data = message.get("bytes")
                receive = asyncio.ensure_future(ws.receive())
                if not data:
                    continue  # text frames are not part of the protocol; ignore them
                try:
                    request = rtc.SignalRequest.FromString(data)
                except DecodeError:
                    self.counters.malformed_frames += 1
                    continue
                kind = request.WhichOneof("message")
                if kind == "ping":
                    await ws.send_bytes(rtc.SignalResponse(pong=int(time.time() * 1000)).SerializeToString())
                    continue
                if kind == "ping_req":
                    now = int(time.time() * 1000)
                    pong = rtc.Pong(last_ping_timestamp=request.ping_req.timestamp, timestamp=now)
                    await ws.send_bytes(rtc.SignalResponse(pong_resp=pong).SerializeToString())
                    continue
                if kind is None:
                    self.counters.malformed_frames += 1  # unknown case from a newer client: ignore
                    continue
                self.counters.frames_up += 1
                await self.uplinks.forward(connection_id, data)
                if kind == "leave":
                    return True
        except WebSocketDisconnect:
            return False
        finally:
            receive.cancel()
