"""The media node's side of the local relay wire (docs/multi-dc.md): one UDP socket.

Out: RTP/RTCP of local tracks that other nodes subscribe to (exports), keyframe requests for
remote tracks. In: RTP/RTCP of remote tracks, keyframe requests for exported tracks. The
socket is read from a loop reader and written with non-blocking `sendto`; a datagram the
kernel cannot take is dropped and counted, never queued (old media is worth nothing).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Protocol

from shared.relay_wire import (
    NOT_SIMULCAST,
    LocalType,
    LocalWireError,
    encode_local,
    parse_local,
    stream_id,
)

from .rtp import rtcp
from .rtp.selector import RID_TO_LAYER

log = logging.getLogger(__name__)

LAYER_TO_RID = {layer: rid for rid, layer in RID_TO_LAYER.items()}
READ_BATCH = 256  # datagrams read per wake-up before yielding to the loop


class TrackExports:
    """Relay destinations of one local track, each with the time its soft state lapses."""

    __slots__ = ("_rtcp", "_rtp", "_rtp_plain", "link", "stream", "targets")

    def __init__(self, link: RelayLink, track_sid: str) -> None:
        self.link = link
        self.stream = stream_id(track_sid)
        self._rtp = {rid: encode_local(LocalType.RTP, self.stream, layer) for rid, layer in RID_TO_LAYER.items()}
        self._rtp_plain = encode_local(LocalType.RTP, self.stream, NOT_SIMULCAST)
        self._rtcp = encode_local(LocalType.RTCP, self.stream, NOT_SIMULCAST)
        self.targets: dict[tuple[str, int], float] = {}

    def send_rtp(self, rid: str, packet: bytes) -> None:
        data = self._rtp.get(rid, self._rtp_plain) + packet
        for addr in self.targets:
            self.link.sendto(data, addr)

    def send_sender_report(self, report: rtcp.SenderReport) -> None:
        data = self._rtcp + rtcp.build_sr(report.ssrc, report.ntp, report.rtp_timestamp, report.packet_count,
                                          report.octet_count)
        for addr in self.targets:
            self.link.sendto(data, addr)


class ExportedTrack(Protocol):
    """A local track other nodes receive through the relay (a PublishedTrack)."""

    sid: str
    closed: bool
    layers: list[int]
    exports: TrackExports | None

    def request_keyframe(self, layer: int) -> None: ...


class RelayedTrack(Protocol):
    """A track of another node whose media arrives on this socket (a RemoteTrack)."""

    stream: int

    def on_rtp(self, rid: str, packet: bytes) -> None: ...

    def on_publisher_rtcp(self, packet: rtcp.RtcpPacket) -> None: ...


class RelayLink:
    def __init__(self, bind_ip: str, advertise_ip: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((bind_ip, 0))
        self.address = (advertise_ip, self.sock.getsockname()[1])
        self.remote: dict[int, RelayedTrack] = {}  # stream id -> track arriving through the relay
        self.exported: dict[int, ExportedTrack] = {}  # stream id -> local track sent to the relay
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.dropped_malformed = 0
        self.dropped_unknown = 0
        self.dropped_send = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def address_text(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    # ---- out ------------------------------------------------------------------------------
    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, addr)
        except OSError:  # EAGAIN included: the datagram is dropped, not queued
            self.dropped_send += 1
            return
        self.packets_out += 1
        self.bytes_out += len(data)

    def export(self, track: ExportedTrack, deliver_to: tuple[str, int], ttl_s: float) -> None:
        """Start, refresh (ttl_s > 0) or stop (ttl_s == 0) sending a local track to a relay."""
        exports = track.exports
        if exports is None:
            exports = track.exports = TrackExports(self, track.sid)
        if ttl_s > 0:
            exports.targets[deliver_to] = time.monotonic() + ttl_s
            self.exported[exports.stream] = track
        else:
            exports.targets.pop(deliver_to, None)
            if not exports.targets:
                self.exported.pop(exports.stream, None)

    def sweep(self, now: float) -> None:
        """Drops export targets whose soft state lapsed and tracks that closed."""
        for stream, track in list(self.exported.items()):
            exports = track.exports
            if exports is not None:
                for addr, expiry in list(exports.targets.items()):
                    if expiry <= now or track.closed:
                        del exports.targets[addr]
            if track.closed or exports is None or not exports.targets:
                del self.exported[stream]

    def request_keyframe(self, track: RelayedTrack, layer: int, relay: tuple[str, int]) -> None:
        self.sendto(encode_local(LocalType.KEYFRAME, track.stream, layer), relay)

    # ---- in -------------------------------------------------------------------------------
    def _readable(self) -> None:
        for _ in range(READ_BATCH):
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return
            except OSError:
                return
            self.packets_in += 1
            self.bytes_in += len(data)
            try:
                kind, stream, layer, payload = parse_local(data)
            except LocalWireError:
                self.dropped_malformed += 1
                continue
            if kind == LocalType.RTP:
                remote = self.remote.get(stream)
                if remote is None:
                    self.dropped_unknown += 1
                    continue
                remote.on_rtp(LAYER_TO_RID.get(layer, ""), payload)
            elif kind == LocalType.KEYFRAME:
                local = self.exported.get(stream)
                if local is None:
                    self.dropped_unknown += 1
                    continue
                for wanted in (local.layers if layer == NOT_SIMULCAST else (layer,)):
                    local.request_keyframe(wanted)
            else:
                remote = self.remote.get(stream)
                if remote is None:
                    self.dropped_unknown += 1
                    continue
                try:
                    packets = rtcp.parse_compound(payload)
                except ValueError:
                    self.dropped_malformed += 1
                    continue
                for packet in packets:
                    remote.on_publisher_rtcp(packet)

    def counters(self) -> dict[str, int]:
        return {"relay_packets_in": self.packets_in, "relay_bytes_in": self.bytes_in,
                "relay_packets_out": self.packets_out, "relay_bytes_out": self.bytes_out,
                "relay_dropped_malformed": self.dropped_malformed, "relay_dropped_unknown": self.dropped_unknown,
                "relay_dropped_send": self.dropped_send}
