"""Relay bytes per room for billing: the forwarder's per-stream WAN counters turned into
`UsageSample` deltas (relay_out at the origin relay, relay_in at the destination). Pure."""

from __future__ import annotations

from collections.abc import Iterable

from services.relay.forwarder import StreamState
from shared.events import Direction, UsageSample

RoomKey = tuple[str, str, Direction]  # project, room, direction


class RelayUsage:
    def __init__(self) -> None:
        self._seen: dict[int, tuple[int, int, int, int]] = {}  # stream -> counters at the last sample
        self._pending: dict[RoomKey, list[int]] = {}  # bytes, packets not sampled yet

    def _fold(self, state: StreamState) -> None:
        before = self._seen.get(state.stream, (0, 0, 0, 0))
        now = (state.bytes_in, state.packets_in, state.bytes_out, state.packets_out)
        self._seen[state.stream] = now
        for direction, (b, p) in ((Direction.RELAY_IN, (0, 1)), (Direction.RELAY_OUT, (2, 3))):
            delta_bytes, delta_packets = now[b] - before[b], now[p] - before[p]
            if delta_bytes or delta_packets:
                totals = self._pending.setdefault((state.project, state.room, direction), [0, 0])
                totals[0] += delta_bytes
                totals[1] += delta_packets

    def retire(self, state: StreamState) -> None:
        """A stream leaves the forwarder: keep its last unsampled bytes."""
        self._fold(state)
        self._seen.pop(state.stream, None)

    def sample(self, streams: Iterable[StreamState], start_ms: int, end_ms: int) -> list[UsageSample]:
        for state in streams:
            self._fold(state)
        samples = [UsageSample(project=project, room=room, direction=direction, bytes=totals[0], packets=totals[1],
                               start_ms=start_ms, end_ms=end_ms)
                   for (project, room, direction), totals in sorted(self._pending.items())]
        self._pending.clear()
        return samples
