"""Data packet forwarding as LiveKit does it: the sender must hold `can_publish_data`, its
identity and sid are stamped by the server (clients cannot spoof them), reliable packets keep
the sender's sequence and older-or-equal sequences are dropped, and delivery goes to the
destination identities or to everyone but the sender. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError
from livekit.protocol import models

MAX_DATA_PACKET = 64 * 1024 + 1024  # 64 KiB payload plus headroom; larger messages are refused


@dataclass(frozen=True, slots=True)
class RoutedData:
    payload: bytes  # the DataPacket to send, re-serialized with server-stamped sender fields
    destinations: tuple[str, ...]  # identities; empty = everyone but the sender
    reliable: bool


class DataSenderState:
    __slots__ = ("dropped", "identity", "last_reliable_seq", "sid")

    def __init__(self, sid: str, identity: str) -> None:
        self.sid = sid
        self.identity = identity
        self.last_reliable_seq = 0
        self.dropped = 0


def route_data(sender: DataSenderState, can_publish_data: bool, raw: bytes, reliable: bool) -> RoutedData | None:
    if not can_publish_data or len(raw) > MAX_DATA_PACKET:
        sender.dropped += 1
        return None
    try:
        packet = models.DataPacket.FromString(raw)
    except DecodeError:
        sender.dropped += 1
        return None
    if reliable and packet.sequence:
        if packet.sequence <= sender.last_reliable_seq:
            sender.dropped += 1  # a retransmission after resume we already forwarded
            return None
        sender.last_reliable_seq = packet.sequence
    packet.participant_sid = sender.sid
    packet.participant_identity = sender.identity
    destinations = list(packet.destination_identities)
    if packet.HasField("user"):
        packet.user.participant_sid = sender.sid
        packet.user.participant_identity = sender.identity
        destinations.extend(i for i in packet.user.destination_identities if i not in destinations)
    packet.kind = models.DataPacket.Kind.RELIABLE if reliable else models.DataPacket.Kind.LOSSY
    return RoutedData(packet.SerializeToString(), tuple(destinations), reliable)


def server_data(payload: bytes, topic: str, destinations: list[str], reliable: bool, nonce: bytes = b"") -> bytes:
    """A DataPacket from the server (RoomService.SendData): empty sender identity and sid."""
    packet = models.DataPacket(
        kind=models.DataPacket.Kind.RELIABLE if reliable else models.DataPacket.Kind.LOSSY,
        destination_identities=destinations,
        user=models.UserPacket(payload=payload, topic=topic, destination_identities=destinations, nonce=nonce),
    )
    return packet.SerializeToString()
