"""Delay and loss for one direction of an emulated link (what `tc netem delay D loss L` does).

Pure and clock-free: the caller passes `now`. Used by the `wire` emulator, the lab's fallback for
kernels without `sch_netem`.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

DEFAULT_QUEUE_LIMIT = 10_000  # frames in flight per direction; netem's default is 1000 at 1 Gbit/s


@dataclass(frozen=True)
class Shape:
    delay_ms: int
    loss_percent: float = 0.0


class Direction:
    """Frames in flight from one end of a link to the other, released once their delay is over."""

    def __init__(self, rng: random.Random | None = None, limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        self._rng = rng or random.Random()
        self._limit = limit
        self._queue: list[tuple[float, int, bytes]] = []
        self._seq = 0  # keeps frames with equal deadlines in arrival order
        self.passed = 0
        self.lost = 0  # dropped by the configured loss
        self.overflowed = 0  # dropped because the queue was full
        self.undeliverable = 0  # released, but the far end would not take it (a cut link)

    def offer(self, frame: bytes, now: float, shape: Shape) -> bool:
        """Queue `frame` unless loss or a full queue drops it (it then only counts)."""
        if shape.loss_percent > 0 and self._rng.random() * 100 < shape.loss_percent:
            self.lost += 1
            return False
        if len(self._queue) >= self._limit:
            self.overflowed += 1
            return False
        self._seq += 1
        heapq.heappush(self._queue, (now + shape.delay_ms / 1000, self._seq, frame))
        return True

    def pop_due(self, now: float) -> list[bytes]:
        due: list[bytes] = []
        while self._queue and self._queue[0][0] <= now:
            due.append(heapq.heappop(self._queue)[2])
        self.passed += len(due)
        return due

    def next_deadline(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def counters(self) -> dict[str, int]:
        return {"passed": self.passed, "lost": self.lost, "overflowed": self.overflowed,
                "undeliverable": self.undeliverable}

    def __len__(self) -> int:
        return len(self._queue)
