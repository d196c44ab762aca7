"""The part of a room hosted on this media node: its local sessions and what they publish."""

from __future__ import annotations

from typing import TYPE_CHECKING

from livekit.protocol import models, rtc

from shared.control import RoomSpec

from .protocol import room_proto

if TYPE_CHECKING:
    from .session import Session
    from .track import PublishedTrack


class NodeRoom:
    def __init__(self, spec: RoomSpec) -> None:
        self.spec = spec
        self.sessions: dict[str, Session] = {}
        self.tracks: dict[str, PublishedTrack] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    def visible_sessions(self, exclude: str = "") -> list[Session]:
        return [s for s in self.sessions.values() if s.sid != exclude and not s.permission.hidden]

    def by_identity(self, identity: str) -> Session | None:
        for session in self.sessions.values():
            if session.identity == identity:
                return session
        return None

    def proto(self) -> models.Room:
        publishers = sum(1 for s in self.sessions.values() if s.published)
        return room_proto(self.spec, len(self.visible_sessions()), publishers)

    def broadcast(self, response: rtc.SignalResponse, exclude: str = "") -> None:
        for session in list(self.sessions.values()):
            if session.sid != exclude:
                session.send(response)

    def broadcast_participant(self, info: models.ParticipantInfo, exclude: str = "", hidden: bool = False) -> None:
        """Tells everyone (the participant itself included, unless excluded) of a change."""
        if hidden:
            return
        self.broadcast(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[info])), exclude)
