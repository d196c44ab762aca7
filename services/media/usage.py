"""Usage metering: turns a session's running wire counters into UsageSample deltas. Pure.

Participant-level samples (track_sid "") carry the bytes that really crossed this node's
sockets for that participant (SRTP, SCTP, DTLS and STUN included), which is what billing
charges; per-track samples break the media part down for analytics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.events import Direction, UsageSample


@dataclass
class Counters:
    bytes: int = 0
    packets: int = 0


@dataclass
class UsageMeter:
    project: str
    room: str
    room_sid: str
    participant_sid: str
    identity: str
    started_ms: int
    last_ms: int = 0
    last: dict[tuple[str, Direction], Counters] = field(default_factory=dict)

    def samples(self, now_ms: int, totals: dict[tuple[str, Direction], Counters]) -> list[UsageSample]:
        """Deltas since the previous call for every (track sid or "", direction) counter."""
        start = self.last_ms or self.started_ms
        out: list[UsageSample] = []
        connection_ms = max(0, now_ms - start)
        for key, total in sorted(totals.items()):
            previous = self.last.get(key, Counters())
            delta_bytes, delta_packets = total.bytes - previous.bytes, total.packets - previous.packets
            is_participant_total = key[0] == ""
            if delta_bytes <= 0 and delta_packets <= 0 and not is_participant_total:
                continue
            out.append(UsageSample(
                project=self.project, room=self.room, room_sid=self.room_sid, participant_sid=self.participant_sid,
                identity=self.identity, track_sid=key[0], direction=key[1], bytes=max(0, delta_bytes),
                packets=max(0, delta_packets),
                # connection time is carried once per interval, on the upstream participant total
                connection_ms=connection_ms if is_participant_total and key[1] == Direction.UPSTREAM else 0,
                start_ms=start, end_ms=now_ms))
            self.last[key] = Counters(total.bytes, total.packets)
        self.last_ms = now_ms
        return out
