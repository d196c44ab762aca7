"""Link keys, nonces and replay windows of the WAN wire.

* One AES-256-GCM key per link (unordered DC pair, MESHRTC_RELAY_KEYS); both directions share it,
  so the 12-byte nonce is the sender's DC index (4 bytes) + the sender's counter for that link
  (8 bytes): no two datagrams sealed with one key share a nonce.
* Counters start at the wall clock in microseconds, so a restarted relay continues above every
  counter it used before (unless it sent more than a million datagrams a second on one link).
* `ReplayWindow` is a sliding window per link and direction: a counter already seen, or more than
  `size` behind the highest one, is a replay. Only datagrams that authenticated move the window.
"""

from __future__ import annotations

import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_BYTES", "InvalidTag", "LinkCipher", "ReplayWindow", "first_counter"]

KEY_BYTES = 32
REPLAY_WINDOW = 4096


def first_counter() -> int:
    return time.time_ns() // 1000


class LinkCipher:
    """Seal/open for one link as seen from one side (`own_index` seals, `peer_index` opens)."""

    __slots__ = ("_aead", "_open_prefix", "_seal_prefix", "counter")  # the sender bumps `counter` per datagram

    def __init__(self, key: bytes, own_index: int, peer_index: int) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"link key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self._seal_prefix = own_index.to_bytes(4, "big")
        self._open_prefix = peer_index.to_bytes(4, "big")
        self.counter = first_counter()

    def seal(self, counter: int, body: bytes, header: bytes) -> bytes:
        return self._aead.encrypt(self._seal_prefix + counter.to_bytes(8, "big"), body, header)

    def open(self, counter: int, sealed: bytes, header: bytes) -> bytes:
        """The body, or InvalidTag when the datagram was not sealed by the peer with this key."""
        return self._aead.decrypt(self._open_prefix + counter.to_bytes(8, "big"), sealed, header)


class ReplayWindow:
    """Sliding anti-replay window over a peer's counters.

    A ring of `size` slots holds the last counter seen in each slot (`counter % size`): a counter
    within `size` of the highest one was seen exactly when its slot holds it. O(1) per datagram,
    no big-integer bitmap to shift."""

    __slots__ = ("highest", "mask", "ring", "size")

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        if size & (size - 1):
            raise ValueError("the replay window size must be a power of two")
        self.size = size
        self.mask = size - 1
        self.highest = -1
        self.ring = [-1] * size

    def check(self, counter: int) -> str | None:
        """None when `counter` is new; else the drop reason ("replayed" or "too_old")."""
        if counter > self.highest:
            return None
        if self.highest - counter >= self.size:
            return "too_old"
        if self.ring[counter & self.mask] == counter:
            return "replayed"
        return None

    def mark(self, counter: int) -> None:
        """Record an authenticated counter (call only after `check` said it is new)."""
        self.ring[counter & self.mask] = counter
        if counter > self.highest:
            self.highest = counter
