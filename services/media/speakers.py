"""Active speaker detection from the RFC 6464 audio levels publishers put in their packets.
Pure: fed with each audio track's smoothed level, it reports what changed since last time."""

from __future__ import annotations

from dataclasses import dataclass

# LiveKit's default: louder than -35 dBov counts as speaking. Levels here are 1 - dBov/127.
ACTIVE_LEVEL = 1.0 - 35 / 127


@dataclass(frozen=True)
class SpeakerChange:
    participant_sid: str
    level: float
    active: bool


class SpeakerDetector:
    def __init__(self, threshold: float = ACTIVE_LEVEL) -> None:
        self.threshold = threshold
        self.active: dict[str, float] = {}

    def update(self, levels: dict[str, float]) -> list[SpeakerChange]:
        """`levels`: participant sid -> its loudest audio track's level. Returns the speakers
        that started, stopped, or changed level noticeably, loudest first."""
        now_active = {sid: level for sid, level in levels.items() if level >= self.threshold}
        changes = [SpeakerChange(sid, 0.0, False) for sid in self.active if sid not in now_active]
        for sid, level in now_active.items():
            previous = self.active.get(sid)
            if previous is None or abs(previous - level) > 0.05:
                changes.append(SpeakerChange(sid, level, True))
        if changes:
            self.active = now_active
        return sorted(changes, key=lambda c: -c.level)
