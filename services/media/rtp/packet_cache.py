"""Fixed-size ring of recently received packets of one RTP stream, for answering NACKs."""

from __future__ import annotations

__all__ = ["PacketCache"]


class PacketCache:
    """Plaintext packets of one published stream (one SSRC), indexed by sequence number.

    ``size`` must be a power of two dividing 65536, so slot ``seq & mask`` is stable across
    sequence-number wraparound. A slot remembers the sequence number it holds, so a lookup for a
    packet that has been overwritten (older than ``size`` packets) or never arrived returns None.
    The stored objects are the caller's ``bytes`` (no copy).
    """

    __slots__ = ("_mask", "_packets", "_seqs", "highest", "size")

    def __init__(self, size: int = 1024) -> None:
        if size <= 0 or size & (size - 1) or size > 65536:
            raise ValueError("cache size must be a power of two <= 65536")
        self.size = size
        self._mask = size - 1
        self._packets: list[bytes | None] = [None] * size
        self._seqs: list[int] = [-1] * size
        #: Newest sequence number stored, or -1 while empty.
        self.highest = -1

    def put(self, seq: int, packet: bytes) -> None:
        i = seq & self._mask
        self._packets[i] = packet
        self._seqs[i] = seq
        high = self.highest
        if high < 0 or ((seq - high) & 0xFFFF) < 0x8000:
            self.highest = seq

    def get(self, seq: int) -> bytes | None:
        seq &= 0xFFFF
        i = seq & self._mask
        if self._seqs[i] != seq:
            return None
        # Reject a slot left over from 65536 packets ago (only possible after a long pause
        # in put() calls for this slot while the stream kept running elsewhere).
        high = self.highest
        if ((high - seq) & 0xFFFF) >= self.size:
            return None
        return self._packets[i]

    def __contains__(self, seq: int) -> bool:
        return self.get(seq) is not None

    def clear(self) -> None:
        """Forget everything (e.g. the publisher restarted with a new sequence space)."""
        self._packets = [None] * self.size
        self._seqs = [-1] * self.size
        self.highest = -1
