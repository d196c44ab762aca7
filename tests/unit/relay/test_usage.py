from __future__ import annotations

from services.relay.forwarder import StreamState
from services.relay.usage import RelayUsage
from shared.events import Direction


def test_relay_bytes_per_room_as_deltas_including_retired_streams() -> None:
    usage = RelayUsage()
    a, b = StreamState(1, "TR_a", 0, "room-1", "p"), StreamState(2, "TR_b", 0, "room-1", "p")
    a.bytes_out, a.packets_out = 1000, 10
    b.bytes_out, b.packets_out = 500, 5
    b.bytes_in, b.packets_in = 70, 1
    first = usage.sample([a, b], 0, 5000)
    assert [(s.room, s.direction, s.bytes, s.packets) for s in first] == [
        ("room-1", Direction.RELAY_IN, 70, 1), ("room-1", Direction.RELAY_OUT, 1500, 15)]
    assert all(s.project == "p" and (s.start_ms, s.end_ms) == (0, 5000) for s in first)
    a.bytes_out, a.packets_out = 1100, 11
    usage.retire(a)  # gone before the next sample: its last 100 bytes are not lost
    second = usage.sample([b], 5000, 10000)
    assert [(s.direction, s.bytes, s.packets) for s in second] == [(Direction.RELAY_OUT, 100, 1)]
    assert usage.sample([b], 10000, 15000) == []
