from __future__ import annotations

import os

import pytest

from services.relay.crypto import InvalidTag, LinkCipher, ReplayWindow, first_counter


def pair() -> tuple[LinkCipher, LinkCipher]:
    key = os.urandom(32)
    return LinkCipher(key, 0, 1), LinkCipher(key, 1, 0)


def test_seal_open_round_trip_with_header_authenticated() -> None:
    a, b = pair()
    sealed = a.seal(7, b"media", b"header")
    assert b.open(7, sealed, b"header") == b"media"
    with pytest.raises(InvalidTag):
        b.open(7, sealed, b"Header")  # the clear header is associated data
    with pytest.raises(InvalidTag):
        b.open(8, sealed, b"header")  # the counter is the nonce
    with pytest.raises(InvalidTag):
        b.open(7, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"header")


def test_directions_use_distinct_nonces() -> None:
    """Both ends share the key; the sender index in the nonce keeps equal counters apart."""
    a, b = pair()
    assert a.seal(1, b"x", b"h") != b.seal(1, b"x", b"h")
    with pytest.raises(InvalidTag):
        a.open(1, a.seal(1, b"x", b"h"), b"h")  # a's own datagram reflected back is not b's


def test_wrong_key_is_forged() -> None:
    a, _ = pair()
    other = LinkCipher(os.urandom(32), 1, 0)
    with pytest.raises(InvalidTag):
        other.open(1, a.seal(1, b"x", b"h"), b"h")
    with pytest.raises(ValueError):
        LinkCipher(b"short", 0, 1)


def test_counters_start_above_those_of_an_earlier_run() -> None:
    earlier = first_counter()
    assert LinkCipher(os.urandom(32), 0, 1).counter >= earlier


def test_replay_window_accepts_new_and_reordered_rejects_seen_and_old() -> None:
    window = ReplayWindow(size=64)
    for counter in (100, 102, 101):
        assert window.check(counter) is None
        window.mark(counter)
    assert window.check(101) == "replayed"
    assert window.check(100) == "replayed"
    assert window.check(99) is None  # late but inside the window, not seen
    assert window.check(102 - 64) == "too_old"
    window.mark(1000)  # a jump beyond the window clears the history
    assert window.check(999) is None
    assert window.check(1000) == "replayed"
    assert window.check(102) == "too_old"


def test_replay_window_unmarked_counters_stay_acceptable() -> None:
    """Only authenticated datagrams are marked: a forgery with counter N must not block the real N."""
    window = ReplayWindow()
    window.mark(10)
    assert window.check(11) is None  # checked (forged, never marked) ...
    assert window.check(11) is None  # ... so the genuine 11 still gets in


def test_replay_window_size_is_a_power_of_two() -> None:
    with pytest.raises(ValueError):
        ReplayWindow(size=1000)
