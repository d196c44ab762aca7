"""NodeRoom.update_quality / broadcast: one frame per room, correct per-participant view."""

from __future__ import annotations

from dataclasses import dataclass, field

from livekit.protocol import models, rtc

from services.media.room import NodeRoom
from shared.contracts.control import RoomSpec

EXCELLENT, POOR, LOST = models.ConnectionQuality.EXCELLENT, models.ConnectionQuality.POOR, models.ConnectionQuality.LOST


@dataclass
class LossyTrack:
    fraction: float

    def loss(self) -> float:
        return self.fraction


@dataclass
class FakeSession:
    """The two things the room reads of a session, and what it sends."""

    sid: str
    tracks: dict[str, LossyTrack] = field(default_factory=dict)
    frames: list[bytes] = field(default_factory=list)

    @property
    def published(self) -> bool:
        return bool(self.tracks)

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)


def room_with(*sessions: FakeSession) -> NodeRoom:
    room = NodeRoom(RoomSpec(name="r", sid="RM_r"))
    for session in sessions:
        room.sessions[session.sid] = session  # type: ignore[assignment]
    return room


def qualities(frame: bytes) -> dict[str, int]:
    update = rtc.SignalResponse.FromString(frame).connection_quality
    return {info.participant_sid: info.quality for info in update.updates}


def test_everyone_gets_everyone_including_itself() -> None:
    sessions = [FakeSession(f"PA_{i}", {"TR": LossyTrack(0.0)} if i % 2 else {}) for i in range(6)]
    sessions[1].tracks["TR"].fraction = 0.1
    room = room_with(*sessions)
    room.update_quality()
    for session in sessions:
        assert len(session.frames) == 1
        seen = qualities(session.frames[0])
        assert set(seen) == {s.sid for s in sessions}
        assert seen["PA_1"] == POOR and seen["PA_3"] == EXCELLENT
    # one serialization shared by the room: the very same bytes object
    assert len({id(s.frames[0]) for s in sessions}) == 1


def test_publisher_never_sees_lost_for_itself_others_do() -> None:
    lost = FakeSession("PA_lost", {"TR": LossyTrack(0.9)})
    other, listener = FakeSession("PA_o", {"TR": LossyTrack(0.0)}), FakeSession("PA_l")
    room = room_with(lost, other, listener)
    room.update_quality()
    assert qualities(lost.frames[0]) == {"PA_lost": POOR, "PA_o": EXCELLENT, "PA_l": EXCELLENT}
    assert qualities(other.frames[0])["PA_lost"] == LOST
    assert qualities(listener.frames[0])["PA_lost"] == LOST
    assert list(qualities(lost.frames[0])) == ["PA_lost", "PA_o", "PA_l"]  # order kept


def test_broadcast_serializes_once_and_honours_exclude() -> None:
    a, b, c = FakeSession("PA_a"), FakeSession("PA_b"), FakeSession("PA_c")
    room = room_with(a, b, c)
    room.broadcast(rtc.SignalResponse(refresh_token="t"), exclude="PA_b")
    assert b.frames == [] and a.frames == c.frames and a.frames[0] is c.frames[0]
    assert rtc.SignalResponse.FromString(a.frames[0]).refresh_token == "t"
