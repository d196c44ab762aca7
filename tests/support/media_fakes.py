"""Hand-written stand-ins for the media node's edges, for unit tests of sessions and rooms
without a NATS server or a PeerConnection: the bus outbox, the client's signal channel and the
two PeerConnections of a session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from livekit.protocol import rtc

from services.media.reporting import Reporter
from services.media.webrtc.sdp import CodecInfo, MediaSection
from shared.events import Envelope


class MemoryBus:
    """The bus's event outbox, in memory: what the node would have published, in order."""

    def __init__(self) -> None:
        self.published: list[tuple[Envelope, str | None]] = []

    def publish_event_nowait(self, env: Envelope, subject: str | None = None) -> None:
        self.published.append((env, subject))

    def events(self) -> list[Envelope]:
        """Events on the default subject (not usage samples or telemetry)."""
        return [env for env, subject in self.published if subject is None]

    def types(self) -> list[str]:
        return [env.type for env in self.events()]


def memory_reporter(bus: MemoryBus, node_id: str = "node-a", dc: str = "dc1") -> Reporter:
    return Reporter(bus, lambda payload, room: Envelope.new(payload, dc=dc, node=node_id, room=room),  # type: ignore[arg-type]
                    node_id, dc)


class ClientFrames:
    """The signal side of sessions: every frame sent to each client, decoded."""

    def __init__(self) -> None:
        self.frames: dict[str, list[rtc.SignalResponse]] = {}
        self.closes: dict[str, str] = {}

    async def send_to_client(self, sid: str, data: bytes, close_reason: str | None, connection_id: str = "") -> None:
        self.frames.setdefault(sid, []).append(rtc.SignalResponse.FromString(data))
        if close_reason is not None:
            self.closes[sid] = close_reason

    def of(self, sid: str, kind: str) -> list[rtc.SignalResponse]:
        return [frame for frame in self.frames.get(sid, []) if frame.WhichOneof("message") == kind]


class FakeOutgoing:
    """A subscriber leg that is never negotiated (no media flows in unit tests)."""

    def __init__(self, kind: str, track_id: str, stream_id: str) -> None:
        self.kind = kind
        self.track_id = track_id
        self.stream_id = stream_id
        self.negotiated = False
        self.on_rtcp: Callable[[bytes], None] | None = None
        self.bytes_sent = 0
        self.packets_sent = 0


class FakePeer:
    """One PeerConnection of a session: offers and answers are counted strings."""

    def __init__(self, role: str, label: str) -> None:
        self.role = role
        self.label = label
        self.on_data: Any = None
        self.on_state: Any = None
        self.on_rtp_track: Any = None
        self.on_rtcp: Any = None
        self.closed = False
        self.connection_state = "new"
        self.channels: list[str] = []
        self.offers: list[bool] = []  # ice_restart flag of each offer made
        self.answers: list[str] = []
        self.outgoing: dict[str, FakeOutgoing] = {}
        self.removed: list[str] = []
        self.media: list[MediaSection] = []  # what the client's next offer publishes
        self.rtcp_sent: list[bytes] = []
        self.data_sent: list[tuple[str, bytes]] = []
        self.bytes_received = self.packets_received = self.bytes_sent = self.packets_sent = 0
        self.ice_restarts = 0

    def create_data_channel(self, label: str, *, ordered: bool = True, max_retransmits: int | None = None) -> None:
        self.channels.append(label)

    async def create_offer(self, *, ice_restart: bool = False) -> str:
        self.offers.append(ice_restart)
        return f"offer {len(self.offers)} of {self.label}: {sorted(self.outgoing)}"

    async def accept_answer(self, sdp: str) -> None:
        self.answers.append(sdp)

    async def accept_offer(self, sdp: str) -> str:
        return f"answer to {sdp}"

    def incoming_media(self) -> list[MediaSection]:
        return list(self.media)

    async def add_remote_candidate(self, candidate: str) -> None:
        if not candidate.startswith("candidate:"):
            raise ValueError(candidate)

    def add_outgoing(self, kind: str, track_id: str, stream_id: str, *, codecs: Any = None,
                     rtx: bool = True) -> FakeOutgoing:
        out = self.outgoing[track_id] = FakeOutgoing(kind, track_id, stream_id)
        return out

    async def remove_outgoing(self, track: FakeOutgoing | str) -> None:
        track_id = track if isinstance(track, str) else track.track_id
        self.outgoing.pop(track_id, None)
        self.removed.append(track_id)

    def send_rtcp(self, packet: bytes) -> bool:
        self.rtcp_sent.append(packet)
        return True

    def send_data(self, label: str, data: bytes) -> bool:
        self.data_sent.append((label, data))
        return True

    async def close(self) -> None:
        self.closed = True
        self.connection_state = "closed"


def published_media(cid: str, kind: str = "audio", mid: str = "0") -> MediaSection:
    """The m-line of a client offer that publishes the track added with `cid`."""
    codec = CodecInfo(111, "opus", 48000, 2) if kind == "audio" else CodecInfo(96, "VP8", 90000)
    return MediaSection(index=int(mid), kind=kind, port=9, protocol="UDP/TLS/RTP/SAVPF",
                        formats=[str(codec.payload_type)], mid=mid, direction="sendonly", msid=("stream", cid),
                        codecs={codec.payload_type: codec})
