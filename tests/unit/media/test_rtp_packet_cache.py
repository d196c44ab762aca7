from __future__ import annotations

import pytest

from services.media.rtp.packet_cache import PacketCache


def pkt(seq: int) -> bytes:
    return b"pkt-%d" % seq


def test_put_get_and_miss() -> None:
    c = PacketCache(16)
    for s in range(10):
        c.put(s, pkt(s))
    assert c.get(3) == pkt(3)
    assert c.get(9) == pkt(9)
    assert c.get(10) is None  # never stored
    assert 4 in c and 12 not in c
    assert c.highest == 9


def test_overwritten_slots_are_misses() -> None:
    c = PacketCache(16)
    for s in range(40):
        c.put(s, pkt(s))
    assert c.get(23) is None  # evicted by 39 (same slot)
    assert c.get(24) == pkt(24)  # oldest still present
    assert c.get(39) == pkt(39)


def test_wraparound() -> None:
    c = PacketCache(1024)
    seqs = [(65000 + i) & 0xFFFF for i in range(1200)]
    for s in seqs:
        c.put(s, pkt(s))
    assert c.highest == seqs[-1] == 663
    for s in seqs[-1024:]:
        assert c.get(s) == pkt(s)
    for s in seqs[:176]:
        assert c.get(s) is None
    assert c.get(65535) == pkt(65535) and c.get(0) == pkt(0)  # across the wrap
    assert c.get(65535 + 65536) == c.get(65535)  # masked to 16 bits


def test_late_packet_does_not_move_highest() -> None:
    c = PacketCache(64)
    c.put(100, pkt(100))
    c.put(98, pkt(98))  # reordered/retransmitted
    assert c.highest == 100
    assert c.get(98) == pkt(98)


def test_stale_slot_rejected_after_long_jump() -> None:
    c = PacketCache(16)
    c.put(5, pkt(5))
    c.put(5 + 16 * 100, pkt(1605))  # same slot, overwritten
    assert c.get(5) is None
    assert c.get(1605) == pkt(1605)
    c2 = PacketCache(16)
    c2.put(5, pkt(5))
    c2.put(1000, pkt(1000))  # slot 8; slot 5 still holds seq 5 but it is far too old
    assert c2.get(5) is None
    assert c2.get(1000) == pkt(1000)


def test_clear_and_validation() -> None:
    c = PacketCache(8)
    c.put(1, pkt(1))
    c.clear()
    assert c.get(1) is None and c.highest == -1
    for bad in (0, 3, 1000, 131072):
        with pytest.raises(ValueError):
            PacketCache(bad)
