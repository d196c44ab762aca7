"""route_data: LiveKit data packet forwarding rules."""

from __future__ import annotations

import pytest
from livekit.protocol import models

from services.media.data import MAX_DATA_PACKET, DataSenderState, RoutedData, route_data, server_data

RELIABLE = models.DataPacket.Kind.RELIABLE
LOSSY = models.DataPacket.Kind.LOSSY


def sender() -> DataSenderState:
    return DataSenderState("PA_real", "real")


def user_packet(payload: bytes = b"hi", **kw: object) -> models.DataPacket:
    return models.DataPacket(user=models.UserPacket(payload=payload, topic="t"), **kw)  # type: ignore[arg-type]


def routed(result: RoutedData | None) -> models.DataPacket:
    assert result is not None
    return models.DataPacket.FromString(result.payload)


def test_forwards_user_packet_to_everyone() -> None:
    s = sender()
    out = route_data(s, True, user_packet(b"hello").SerializeToString(), reliable=True)
    assert out is not None
    assert out.destinations == ()
    assert out.reliable is True
    pkt = routed(out)
    assert pkt.user.payload == b"hello"
    assert pkt.user.topic == "t"
    assert (pkt.participant_identity, pkt.participant_sid) == ("real", "PA_real")
    assert (pkt.user.participant_identity, pkt.user.participant_sid) == ("real", "PA_real")
    assert pkt.kind == RELIABLE
    assert s.dropped == 0


def test_without_can_publish_data_dropped() -> None:
    s = sender()
    assert route_data(s, False, user_packet().SerializeToString(), reliable=True) is None
    assert route_data(s, False, user_packet().SerializeToString(), reliable=False) is None
    assert s.dropped == 2


def test_oversized_dropped_before_parsing() -> None:
    s = sender()
    raw = user_packet(b"x" * MAX_DATA_PACKET).SerializeToString()
    assert len(raw) > MAX_DATA_PACKET
    assert route_data(s, True, raw, reliable=True) is None
    assert s.dropped == 1


def test_exact_max_size_forwarded_one_more_dropped() -> None:
    base = len(user_packet(b"").SerializeToString())
    # Grow the payload until the serialized packet is exactly MAX_DATA_PACKET bytes.
    size = MAX_DATA_PACKET - base - 8
    while len(user_packet(b"x" * size).SerializeToString()) < MAX_DATA_PACKET:
        size += 1
    raw = user_packet(b"x" * size).SerializeToString()
    assert len(raw) == MAX_DATA_PACKET
    assert route_data(sender(), True, raw, reliable=False) is not None
    bigger = user_packet(b"x" * (size + 1)).SerializeToString()
    assert len(bigger) == MAX_DATA_PACKET + 1
    assert route_data(sender(), True, bigger, reliable=False) is None
    assert MAX_DATA_PACKET == 64 * 1024 + 1024


@pytest.mark.parametrize("raw", [b"\xff\xff\xff", b"\x0a\x80", b"\x08"])
def test_garbage_dropped(raw: bytes) -> None:
    s = sender()
    assert route_data(s, True, raw, reliable=True) is None
    assert s.dropped == 1


def test_spoofed_sender_fields_overwritten() -> None:
    pkt = models.DataPacket(
        participant_identity="mallory", participant_sid="PA_fake",
        user=models.UserPacket(payload=b"p", participant_identity="mallory", participant_sid="PA_fake"),
    )
    out = routed(route_data(sender(), True, pkt.SerializeToString(), reliable=False))
    assert (out.participant_identity, out.participant_sid) == ("real", "PA_real")
    assert (out.user.participant_identity, out.user.participant_sid) == ("real", "PA_real")


def test_non_user_packets_get_sender_stamped_without_user() -> None:
    pkt = models.DataPacket(participant_identity="mallory",
                            chat_message=models.ChatMessage(id="m1", message="hi", timestamp=1))
    out = routed(route_data(sender(), True, pkt.SerializeToString(), reliable=True))
    assert out.participant_identity == "real"
    assert out.participant_sid == "PA_real"
    assert out.chat_message.message == "hi"
    assert not out.HasField("user")


def test_kind_set_from_channel() -> None:
    raw = user_packet(kind=RELIABLE).SerializeToString()
    assert routed(route_data(sender(), True, raw, reliable=False)).kind == LOSSY
    raw = user_packet(kind=LOSSY).SerializeToString()
    out = route_data(sender(), True, raw, reliable=True)
    assert routed(out).kind == RELIABLE
    assert out is not None and out.reliable is True


def test_reliable_sequence_older_or_equal_dropped() -> None:
    s = sender()
    assert route_data(s, True, user_packet(sequence=5).SerializeToString(), reliable=True) is not None
    assert s.last_reliable_seq == 5
    assert route_data(s, True, user_packet(sequence=5).SerializeToString(), reliable=True) is None
    assert route_data(s, True, user_packet(sequence=3).SerializeToString(), reliable=True) is None
    assert s.dropped == 2
    out = route_data(s, True, user_packet(sequence=6).SerializeToString(), reliable=True)
    assert routed(out).sequence == 6  # the sender's sequence is kept
    assert s.last_reliable_seq == 6


def test_zero_sequence_is_not_tracked() -> None:
    s = sender()
    route_data(s, True, user_packet(sequence=9).SerializeToString(), reliable=True)
    for _ in range(3):
        assert route_data(s, True, user_packet().SerializeToString(), reliable=True) is not None
    assert s.last_reliable_seq == 9
    assert s.dropped == 0


def test_lossy_sequence_is_not_checked_nor_tracked() -> None:
    s = sender()
    route_data(s, True, user_packet(sequence=10).SerializeToString(), reliable=True)
    assert route_data(s, True, user_packet(sequence=2).SerializeToString(), reliable=False) is not None
    assert route_data(s, True, user_packet(sequence=50).SerializeToString(), reliable=False) is not None
    assert s.last_reliable_seq == 10
    assert route_data(s, True, user_packet(sequence=11).SerializeToString(), reliable=True) is not None


def test_dropped_packet_does_not_advance_sequence() -> None:
    s = sender()
    assert route_data(s, False, user_packet(sequence=7).SerializeToString(), reliable=True) is None
    assert s.last_reliable_seq == 0
    assert route_data(s, True, user_packet(sequence=7).SerializeToString(), reliable=True) is not None


def test_destinations_from_packet() -> None:
    raw = user_packet(destination_identities=["bob", "carol"]).SerializeToString()
    assert route_data(sender(), True, raw, reliable=True).destinations == ("bob", "carol")  # type: ignore[union-attr]


def test_destinations_from_user_packet() -> None:
    pkt = models.DataPacket(user=models.UserPacket(payload=b"x", destination_identities=["dave"]))
    assert route_data(sender(), True, pkt.SerializeToString(), reliable=True).destinations == ("dave",)  # type: ignore[union-attr]


def test_destinations_merged_without_duplicates() -> None:
    pkt = models.DataPacket(destination_identities=["bob", "carol"],
                            user=models.UserPacket(payload=b"x", destination_identities=["carol", "dave", "dave"]))
    out = route_data(sender(), True, pkt.SerializeToString(), reliable=False)
    assert out is not None
    assert out.destinations == ("bob", "carol", "dave")


def test_server_data_has_no_sender() -> None:
    raw = server_data(b"payload", "topic", ["a", "b"], reliable=False, nonce=b"n")
    pkt = models.DataPacket.FromString(raw)
    assert pkt.kind == LOSSY
    assert list(pkt.destination_identities) == ["a", "b"]
    assert (pkt.user.payload, pkt.user.topic, pkt.user.nonce) == (b"payload", "topic", b"n")
    assert list(pkt.user.destination_identities) == ["a", "b"]
    assert (pkt.participant_identity, pkt.participant_sid, pkt.user.participant_identity) == ("", "", "")
    assert models.DataPacket.FromString(server_data(b"", "", [], reliable=True)).kind == RELIABLE
