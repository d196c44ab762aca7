"""Minimal LiveKit-protocol clients for benchmarks (no LiveKit SDK, no decoding).

* :class:`Signal` -- the ``/rtc`` WebSocket: binary protobuf ``SignalRequest`` /
  ``SignalResponse`` frames, join first, keep-alive ``ping_req``, frames routed by kind.
* :class:`LightSubscriber` -- joins a room and answers every subscriber offer with meshrtc's own
  ``MediaPeer(role="publisher")`` (our answerer: SRTP unprotected synchronously, every plaintext
  RTP packet handed to a callback, nothing decoded). It counts packets, bytes and sequence gaps
  per SSRC and logs the arrival of the first and the marker packet of every video frame.
* :class:`ReplayPublisher` -- an aiortc ``RTCPeerConnection`` publishing pre-encoded VP8 (replayed
  as ``av.Packet``; aiortc packetizes without re-encoding) and pre-encoded Opus with an RFC 6464
  audio level, one encoding (no simulcast). It logs the send time of the first and the marker
  packet of every video frame, answers PLI/FIR by jumping to the next keyframe of the clip, and
  can pause (sends nothing but RTCP) for idle measurements. It connects through LiveKit
  signalling (``add_track`` -> ``track_published`` -> offer -> answer) or directly to one
  answerer (``direct_offer`` / ``direct_answer``) for a no-SFU baseline.

All times are ``time.monotonic()`` (CLOCK_MONOTONIC, comparable across processes on one host).
ICE is restricted to 127.0.0.1 (``services.media.webrtc.ice``), as the dev server's media node.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import websockets
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpsender import RTCEncodedFrame
from livekit import api
from livekit.protocol import models, rtc

from services.media.rtp.codecs import Codec
from services.media.rtp.forwarder import SourcePacket
from services.media.webrtc import aiortc_compat, ice
from services.media.webrtc.peer import MediaPeer

log = logging.getLogger("bench.lkclient")

API_KEY, API_SECRET = "devkey", "secret"
RCVBUF = 4 << 20
VIDEO_CLOCK = 90000
AUDIO_CLOCK = 48000


def loopback_ice() -> None:
    """Host candidates on 127.0.0.1 only (the dev media node advertises 127.0.0.1), and aiortc's
    hooks installed as a media node would, since bench clients build MediaPeers without one."""
    aiortc_compat.install()
    ice.configure(host_addresses=["127.0.0.1"])


def make_token(identity: str, room: str, ttl_s: int = 3600) -> str:
    grants = api.VideoGrants(room_join=True, room=room)
    return (api.AccessToken(API_KEY, API_SECRET).with_identity(identity).with_name(identity)
            .with_grants(grants).with_ttl(_timedelta(ttl_s)).to_jwt())


def _timedelta(seconds: int) -> Any:
    import datetime

    return datetime.timedelta(seconds=seconds)


# --------------------------------------------------------------------------- signalling


class Signal:
    """One ``/rtc`` WebSocket. ``on_frame(kind, response)`` sees every frame after the join."""

    def __init__(self, url: str, token: str) -> None:
        self.url = f"{url}/rtc?access_token={token}&protocol=15&sdk=python&auto_subscribe=1"
        self.ws: Any = None
        self.join: rtc.JoinResponse | None = None
        self.on_frame: Callable[[str, rtc.SignalResponse], None] | None = None
        self._waiters: list[tuple[str, asyncio.Future[rtc.SignalResponse]]] = []
        self._reader: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.pre_join: list[str] = []  # kinds of frames received before the JoinResponse

    async def connect(self, timeout: float = 20.0) -> rtc.JoinResponse:
        self.ws = await asyncio.wait_for(websockets.connect(self.url, max_size=None), timeout)
        deadline = time.monotonic() + timeout
        while True:
            first = rtc.SignalResponse.FromString(
                await asyncio.wait_for(self.ws.recv(), max(0.1, deadline - time.monotonic())))
            kind = first.WhichOneof("message")
            if kind == "join":
                break
            if kind == "leave" or len(self.pre_join) > 50:
                raise RuntimeError(f"no JoinResponse (got {[*self.pre_join, kind]})")
            # A protocol violation (JoinResponse must come first); LiveKit's Rust SDK drops these,
            # JS rejects the connection. Recorded so the harness can report it.
            self.pre_join.append(kind or "?")
        self.join = first.join
        self._reader = asyncio.create_task(self._read_loop())
        self._pinger = asyncio.create_task(self._ping_loop(max(1, first.join.ping_interval or 5)))
        return first.join

    async def send(self, request: rtc.SignalRequest) -> None:
        await self.ws.send(request.SerializeToString())

    def expect(self, kind: str) -> asyncio.Future[rtc.SignalResponse]:
        """A future for the next frame of ``kind`` (register before sending the request)."""
        future: asyncio.Future[rtc.SignalResponse] = asyncio.get_running_loop().create_future()
        self._waiters.append((kind, future))
        return future

    async def _read_loop(self) -> None:
        try:
            async for raw in self.ws:
                if not isinstance(raw, bytes):
                    continue
                response = rtc.SignalResponse.FromString(raw)
                kind = response.WhichOneof("message") or ""
                for waiter in list(self._waiters):
                    if waiter[0] == kind and not waiter[1].done():
                        self._waiters.remove(waiter)
                        waiter[1].set_result(response)
                        break
                if self.on_frame is not None:
                    self.on_frame(kind, response)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()
            for _, future in self._waiters:
                if not future.done():
                    future.set_exception(ConnectionError("signal connection closed"))

    async def _ping_loop(self, interval: float) -> None:
        with contextlib.suppress(websockets.ConnectionClosed, ConnectionError):
            while True:
                await asyncio.sleep(interval)
                now = int(time.time() * 1000)
                await self.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=now, rtt=0)))

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.send(rtc.SignalRequest(leave=rtc.LeaveRequest(
                    reason=models.DisconnectReason.CLIENT_INITIATED)))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2)
        for task in (self._pinger, self._reader):
            if task is not None:
                task.cancel()


# --------------------------------------------------------------------------- light subscriber


@dataclass
class StreamCounter:
    kind: str
    packets: int = 0
    bytes: int = 0
    lost: int = 0
    last_seq: int = -1


@dataclass
class FrameLog:
    """Video frames in arrival order: RTP timestamp, arrival of the first packet and of the
    marker packet (0.0 until seen)."""

    ts: list[int] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)


class LightSubscriber:
    """A subscriber whose PeerConnection is ``MediaPeer(role="publisher")`` used as answerer."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.peer: MediaPeer | None = None
        self.signal: Signal | None = None
        self.streams: dict[int, StreamCounter] = {}
        self.kinds: dict[int, str] = {}
        self.frames = FrameLog()
        self._cur_ts = -1
        self._cur_index = -1
        self.offers = 0
        self.join_retries = 0
        self.leaves = 0
        self.errors: list[str] = []
        self.got_video = asyncio.Event()
        self.got_audio = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- media

    def _learn_kinds(self) -> None:
        assert self.peer is not None
        for media in self.peer.remote_media:
            for ssrc in media.ssrcs:
                self.kinds[ssrc] = media.kind

    def on_rtp(self, packet: bytes) -> None:
        now = time.monotonic()
        ssrc = int.from_bytes(packet[8:12], "big")
        stream = self.streams.get(ssrc)
        if stream is None:
            kind = self.kinds.get(ssrc, "video" if (packet[1] & 0x7F) in (96, 97, 98, 99) else "audio")
            stream = self.streams[ssrc] = StreamCounter(kind)
        stream.packets += 1
        stream.bytes += len(packet)
        seq = (packet[2] << 8) | packet[3]
        if stream.last_seq >= 0:
            gap = (seq - stream.last_seq) & 0xFFFF
            if 1 < gap < 0x8000:
                stream.lost += gap - 1
            if gap < 0x8000:
                stream.last_seq = seq
        else:
            stream.last_seq = seq
        if stream.kind == "video":
            ts = int.from_bytes(packet[4:8], "big")
            frames = self.frames
            if ts != self._cur_ts:
                self._cur_ts = ts
                self._cur_index = len(frames.ts)
                frames.ts.append(ts)
                frames.first.append(now)
                frames.last.append(0.0)
                if not self.got_video.is_set():
                    self.got_video.set()
            if packet[1] & 0x80 and self._cur_index >= 0:
                frames.last[self._cur_index] = now
        elif not self.got_audio.is_set():
            self.got_audio.set()

    def counters(self) -> dict[str, int]:
        out = {"video_packets": 0, "audio_packets": 0, "video_bytes": 0, "audio_bytes": 0, "lost": 0}
        for stream in self.streams.values():
            out[f"{stream.kind}_packets"] += stream.packets
            out[f"{stream.kind}_bytes"] += stream.bytes
            out["lost"] += stream.lost
        out["srtp_errors"] = self.peer.srtp_errors if self.peer else 0
        out["offers"] = self.offers
        out["join_retries"] = self.join_retries
        out["leaves"] = self.leaves
        return out

    # -- connection

    def _new_peer(self) -> MediaPeer:
        peer = MediaPeer(role="publisher", label=f"bench/{self.identity}", timeout=30.0)
        peer.on_rtp = self.on_rtp
        self.peer = peer
        return peer

    async def join(self, url: str, room: str, attempts: int = 5) -> None:
        """Join; a refused WebSocket upgrade (e.g. 503 while the room service briefly counts the
        media node as down on a loaded machine) is retried, and counted in :attr:`join_retries`."""
        self._new_peer()
        for attempt in range(attempts):
            self.signal = Signal(url, make_token(self.identity, room))
            self.signal.on_frame = self._on_frame
            try:
                await self.signal.connect()
                return
            except websockets.InvalidStatus:
                if attempt == attempts - 1:
                    raise
                self.join_retries += 1
                await asyncio.sleep(1.0 + attempt)

    def _on_frame(self, kind: str, response: rtc.SignalResponse) -> None:
        if kind == "leave":
            self.leaves += 1  # the server ended (or asked to restart) the session mid-run
        if kind == "offer":
            task = asyncio.create_task(self._answer(response.offer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, offer: rtc.SessionDescription) -> None:
        assert self.peer is not None and self.signal is not None
        try:
            answer = await self.peer.accept_offer(offer.sdp)
            self._learn_kinds()
            self._grow_buffers()
            self.offers += 1
            await self.signal.send(rtc.SignalRequest(
                answer=rtc.SessionDescription(type="answer", sdp=answer, id=offer.id)))
        except Exception as exc:  # reported to the harness, never raised into the reader
            self.errors.append(f"answer {offer.id}: {exc!r}")
            log.exception("%s: answering offer %d failed", self.identity, offer.id)

    async def wait_connected(self, timeout: float) -> None:
        assert self.peer is not None
        await self.peer.wait_connected(timeout)

    def _grow_buffers(self) -> None:
        """4 MB receive buffers on our UDP sockets (capped by net.core.rmem_max), so a client
        process that is briefly descheduled on a busy machine does not drop what the SFU sent."""
        assert self.peer is not None
        for protocol in self.peer._all_protocols():
            transport = getattr(protocol, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)

    async def accept_direct_offer(self, sdp: str) -> str:
        peer = self._new_peer()
        answer = await peer.accept_offer(sdp)
        self._learn_kinds()
        self._grow_buffers()
        self.offers += 1
        return answer

    async def close(self) -> None:
        if self.signal is not None:
            await self.signal.close()
        if self.peer is not None:
            with contextlib.suppress(Exception):
                await self.peer.close()


# --------------------------------------------------------------------------- publisher


class ReplayVideoTrack(MediaStreamTrack):
    """Replays pre-encoded VP8 frames as ``av.Packet`` at ``fps``, looping; ``request_keyframe``
    makes the next frame the clip's next keyframe (what an encoder does on PLI)."""

    kind = "video"

    def __init__(self, frames: list[tuple[bytes, bool]], fps: float) -> None:
        super().__init__()
        self.frames = frames
        self.fps = fps
        self.index = 0
        self.count = 0
        self.keyframes_forced = 0
        self._want_key = False
        self._keys = [i for i, (_, key) in enumerate(frames) if key]
        self._start: float | None = None
        self.running = asyncio.Event()
        self.running.set()
        self._time_base = fractions.Fraction(1, VIDEO_CLOCK)

    def request_keyframe(self) -> None:
        self._want_key = True

    def pause(self) -> None:
        self.running.clear()

    def resume(self) -> None:
        self._start = None
        self.running.set()

    async def recv(self) -> av.Packet:
        if not self.running.is_set():
            await self.running.wait()
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time() - self.count / self.fps
        due = self._start + self.count / self.fps
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._want_key:
            self._want_key = False
            if not self.frames[self.index][1]:
                self.index = next((k for k in self._keys if k > self.index), self._keys[0])
                self.keyframes_forced += 1
        data, _ = self.frames[self.index]
        self.index = (self.index + 1) % len(self.frames)
        packet = av.Packet(data)
        packet.pts = int(self.count * VIDEO_CLOCK / self.fps)
        packet.time_base = self._time_base
        self.count += 1
        return packet


class ReplayAudioTrack(MediaStreamTrack):
    """Replays pre-encoded 20 ms Opus packets (with their RFC 6464 level, -dBov) at 50/s."""

    kind = "audio"

    def __init__(self, packets: list[tuple[bytes, int]]) -> None:
        super().__init__()
        self.packets = packets
        self.index = 0
        self.count = 0
        self._start: float | None = None
        self.running = asyncio.Event()
        self.running.set()

    def pause(self) -> None:
        self.running.clear()

    def resume(self) -> None:
        self._start = None
        self.running.set()

    async def next_frame(self) -> tuple[bytes, int, int]:
        """(payload, RTP timestamp at 48 kHz, level in dBov 0..127)."""
        if not self.running.is_set():
            await self.running.wait()
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time() - self.count * 0.02
        delay = self._start + self.count * 0.02 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        data, level = self.packets[self.index]
        self.index = (self.index + 1) % len(self.packets)
        ts = self.count * 960
        self.count += 1
        return data, ts, level

    async def recv(self) -> Any:  # pragma: no cover - the sender is given next_frame instead
        raise NotImplementedError


@dataclass
class SendLog:
    """Video frames in send order: RTP timestamp, send time of the first and the marker packet,
    keyframe flag."""

    ts: list[int] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    key: list[bool] = field(default_factory=list)


class ReplayPublisher:
    def __init__(self, identity: str, video: list[tuple[bytes, bool]], audio: list[tuple[bytes, int]],
                 fps: float = 30.0) -> None:
        self.identity = identity
        self.video = ReplayVideoTrack(video, fps)
        self.audio = ReplayAudioTrack(audio)
        self.pc = RTCPeerConnection(ice.rtc_configuration())
        self.signal: Signal | None = None
        self.sub_peer: MediaPeer | None = None  # answers the server's subscriber offers
        self.log = SendLog()
        self.video_ssrc = 0
        self.audio_ssrc = 0
        self.sent = {"video_packets": 0, "audio_packets": 0, "video_bytes": 0, "audio_bytes": 0, "rtcp": 0}
        self.plis = 0
        self._parse = SourcePacket(Codec.VP8)
        self._cur_ts = -1
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connected = asyncio.Event()

        @self.pc.on("connectionstatechange")
        def _state() -> None:
            if self.pc.connectionState == "connected":
                self.connected.set()

    # -- set-up

    def _add_transceivers(self) -> None:
        for track in (self.audio, self.video):
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            codecs = [c for c in RTCRtpSender.getCapabilities(track.kind).codecs
                      if c.mimeType.lower() in ("video/vp8", "video/rtx", "audio/opus")]
            transceiver.setCodecPreferences(codecs)
            sender = transceiver.sender
            if track.kind == "video":
                self.video_ssrc = sender._ssrc
                sender._send_keyframe = self._on_keyframe_request  # type: ignore[method-assign]
            else:
                self.audio_ssrc = sender._ssrc
                sender._next_encoded_frame = self._next_audio  # type: ignore[method-assign]

    def _on_keyframe_request(self) -> None:
        self.plis += 1
        self.video.request_keyframe()

    async def _next_audio(self, codec: Any) -> RTCEncodedFrame:
        data, ts, level = await self.audio.next_frame()
        return RTCEncodedFrame([data], ts, -level)  # aiortc writes (False, -audio_level)

    def _hook_send(self) -> None:
        """Wrap the DTLS transport's ``_send_rtp`` (plaintext, before SRTP) to log send times."""
        dtls = self.pc.getTransceivers()[0].sender.transport
        original = dtls._send_rtp
        parse = self._parse

        async def send_rtp(data: bytes) -> None:
            if 191 < data[1] < 224:
                self.sent["rtcp"] += 1
            else:
                now = time.monotonic()
                ssrc = int.from_bytes(data[8:12], "big")
                if ssrc == self.video_ssrc:
                    self.sent["video_packets"] += 1
                    self.sent["video_bytes"] += len(data)
                    ts = int.from_bytes(data[4:8], "big")
                    log_ = self.log
                    if ts != self._cur_ts:
                        self._cur_ts = ts
                        key = False
                        with contextlib.suppress(ValueError):
                            key = parse.load(data).keyframe
                        log_.ts.append(ts)
                        log_.first.append(now)
                        log_.last.append(0.0)
                        log_.key.append(key)
                    if data[1] & 0x80:
                        log_.last[-1] = now
                elif ssrc == self.audio_ssrc:
                    self.sent["audio_packets"] += 1
                    self.sent["audio_bytes"] += len(data)
            await original(data)

        dtls._send_rtp = send_rtp

    # -- through the SFU (LiveKit signalling)

    async def join_and_publish(self, url: str, room: str, timeout: float = 30.0) -> None:
        self.signal = Signal(url, make_token(self.identity, room))
        self.signal.on_frame = self._on_frame
        self.sub_peer = MediaPeer(role="publisher", label=f"bench/{self.identity}/sub", timeout=30.0)
        await self.signal.connect()
        self._add_transceivers()
        for track, kind, source in ((self.audio, models.TrackType.AUDIO, models.TrackSource.MICROPHONE),
                                    (self.video, models.TrackType.VIDEO, models.TrackSource.CAMERA)):
            waiter = self.signal.expect("track_published")
            request = rtc.AddTrackRequest(cid=track.id, name=track.kind, type=kind, source=source)
            if track.kind == "video":
                request.width, request.height = 1280, 720
            await self.signal.send(rtc.SignalRequest(add_track=request))
            published = await asyncio.wait_for(waiter, timeout)
            if published.track_published.cid != track.id:
                raise RuntimeError(f"track_published for {published.track_published.cid}, expected {track.id}")
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        waiter = self.signal.expect("answer")
        await self.signal.send(rtc.SignalRequest(offer=rtc.SessionDescription(
            type="offer", sdp=self.pc.localDescription.sdp, id=1)))
        answer = await asyncio.wait_for(waiter, timeout)
        self._hook_send()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer.answer.sdp, type="answer"))
        await asyncio.wait_for(self.connected.wait(), timeout)

    def _on_frame(self, kind: str, response: rtc.SignalResponse) -> None:
        if kind == "offer" and self.sub_peer is not None:
            task = asyncio.create_task(self._answer_subscriber(response.offer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer_subscriber(self, offer: rtc.SessionDescription) -> None:
        assert self.sub_peer is not None and self.signal is not None
        try:
            answer = await self.sub_peer.accept_offer(offer.sdp)
            await self.signal.send(rtc.SignalRequest(
                answer=rtc.SessionDescription(type="answer", sdp=answer, id=offer.id)))
        except Exception:
            log.exception("publisher: answering subscriber offer failed")

    # -- direct (no SFU) baseline

    async def direct_offer(self) -> str:
        self._add_transceivers()
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        return self.pc.localDescription.sdp

    async def direct_answer(self, sdp: str, timeout: float = 30.0) -> None:
        self._hook_send()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        await asyncio.wait_for(self.connected.wait(), timeout)

    # -- control

    def pause(self) -> None:
        self.video.pause()
        self.audio.pause()

    def resume(self) -> None:
        self.video.resume()
        self.audio.resume()

    async def close(self) -> None:
        if self.signal is not None:
            await self.signal.close()
        if self.sub_peer is not None:
            with contextlib.suppress(Exception):
                await self.sub_peer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), 5)
