"""Identifiers: sortable event ids and LiveKit-style prefixed sids.

Event ids are ULID-like (48-bit millisecond time + 80 random bits, Crockford base32) so that
lexical order is time order and two services never collide without coordinating.
"""

from __future__ import annotations

import os
import threading
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last_ms = 0
_last_rand = 0


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_event_id(now_ms: int | None = None) -> str:
    """A 26-character sortable id; monotonic within one process even inside one millisecond."""
    global _last_ms, _last_rand
    if now_ms is not None:  # an explicit time (replays, tests) stands alone
        return _b32(now_ms, 10) + _b32(int.from_bytes(os.urandom(10), "big"), 16)
    ms = int(time.time() * 1000)
    with _lock:
        if ms <= _last_ms:
            ms = _last_ms
            rand = (_last_rand + 1) & ((1 << 80) - 1)
        else:
            rand = int.from_bytes(os.urandom(10), "big")
        _last_ms, _last_rand = ms, rand
    return _b32(ms, 10) + _b32(rand, 16)


def derived_event_id(parent_id: str, key: str) -> str:
    """A deterministic id for an event that another event causes (e.g. the participant.left
    events a node.down implies): a handler that runs twice publishes the same ids, and
    JetStream's dedupe drops the repeat. Sorts just after its parent."""
    import hashlib

    digest = int.from_bytes(hashlib.sha256(f"{parent_id}/{key}".encode()).digest()[:10], "big")
    return parent_id[:10] + _b32(digest, 16)


def event_id_time_ms(event_id: str) -> int:
    value = 0
    for ch in event_id[:10]:
        value = value * 32 + _CROCKFORD.index(ch)
    return value


_SID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _short_random(length: int = 12) -> str:
    raw = int.from_bytes(os.urandom(16), "big")
    chars = []
    for _ in range(length):
        raw, idx = divmod(raw, 62)
        chars.append(_SID_ALPHABET[idx])
    return "".join(chars)


def new_room_sid() -> str:
    return "RM_" + _short_random()


def new_participant_sid() -> str:
    return "PA_" + _short_random()


def new_track_sid(kind_letter: str = "") -> str:
    """`kind_letter` is 'A' or 'V' as LiveKit does (TR_A…/TR_V…); clients only check `TR_`."""
    return "TR_" + kind_letter + _short_random()


def new_webhook_event_id() -> str:
    return "EV_" + _short_random()


def new_node_id(prefix: str = "ND") -> str:
    return f"{prefix}_{_short_random(10)}"
