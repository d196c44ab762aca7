"""Everything the media node tells the rest of the system, through one sink.

Participant and track events, usage samples and track telemetry are built here from the
sessions and tracks they describe and queued on the bus's ordered outbox: events of one node
reach the stream in the order they happened (webhooks and the room fold depend on it) and
survive a NATS restart. Telemetry is the first thing dropped when the outbox is full.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from livekit.protocol import models

from shared.bus import BusUnavailable
from shared.contracts.subjects import telemetry_room_subject, usage_subject
from shared.events import (
    Envelope,
    ParticipantActive,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    TrackKind,
    TrackMuted,
    TrackPayload,
    TrackPublished,
    TrackUnpublished,
)

from .session import Session
from .telemetry import track_telemetry
from .track import PublishedTrack

log = logging.getLogger(__name__)

REASON_NAMES = {v: k for k, v in models.DisconnectReason.items()}


class EventOutbox(Protocol):
    """The bus as the reporter uses it (shared.bus.Bus; an in-memory one in tests)."""

    def publish_event_nowait(self, env: Envelope, subject: str | None = None) -> None: ...


Stamp = Callable[[object, str], Envelope]  # (payload, room) -> envelope of this node


class Reporter:
    def __init__(self, outbox: EventOutbox, stamp: Stamp, node_id: str, dc: str) -> None:
        self.outbox = outbox
        self.stamp = stamp
        self.node_id = node_id
        self.dc = dc

    def _event(self, payload: object, room: str) -> None:
        self.outbox.publish_event_nowait(self.stamp(payload, room))

    # ---- participants -----------------------------------------------------------------------
    def participant_joined(self, session: Session) -> None:
        spec = session.spec
        self._event(ParticipantJoined(
            sid=session.sid, room_sid=spec.room.sid, identity=spec.identity, name=spec.name, metadata=spec.metadata,
            attributes=spec.attributes, kind=spec.kind, node=self.node_id, signal_node=spec.signal_node,
            project=spec.project, info=_b64(session.info)), spec.room.name)

    def participant_active(self, session: Session) -> None:
        self._event(ParticipantActive(sid=session.sid, identity=session.identity), session.room.name)

    def participant_updated(self, session: Session) -> None:
        info = session.info
        self._event(ParticipantUpdated(
            sid=session.sid, identity=session.identity, name=info.name, metadata=info.metadata,
            attributes=dict(info.attributes), info=_b64(info)), session.room.name)

    def participant_left(self, session: Session, reason: int) -> None:
        self._event(ParticipantLeft(sid=session.sid, identity=session.identity,
                                    reason=REASON_NAMES.get(reason, "UNKNOWN_REASON"),
                                    aborted=not session.active), session.room.name)

    # ---- tracks -----------------------------------------------------------------------------
    def track_published(self, session: Session, track: PublishedTrack) -> None:
        info = track.info
        payload = TrackPayload(
            sid=track.sid, participant_sid=session.sid, name=info.name,
            kind=TrackKind.AUDIO if info.type == models.TrackType.AUDIO else TrackKind.VIDEO,
            source=info.source, muted=info.muted, width=info.width, height=info.height, simulcast=info.simulcast,
            mime_type=info.mime_type, info=_b64(info), wire=track.wire)
        self._event(TrackPublished(track=payload, node=self.node_id), session.room.name)

    def track_unpublished(self, session: Session, track: PublishedTrack) -> None:
        self._event(TrackUnpublished(sid=track.sid, participant_sid=session.sid), session.room.name)

    def track_muted(self, session: Session, track: PublishedTrack) -> None:
        self._event(TrackMuted(sid=track.sid, participant_sid=session.sid, muted=track.info.muted),
                    session.room.name)

    # ---- metering and telemetry -------------------------------------------------------------
    def usage(self, session: Session) -> None:
        """The session's usage since its last sample (one event per counter, each with its own
        id, so billing can count every byte exactly once)."""
        room = session.room.name
        for sample in session.usage.samples(int(time.time() * 1000), session.usage_totals()):
            self.outbox.publish_event_nowait(self.stamp(sample, room), subject=usage_subject(self.dc, room))

    def telemetry(self, rooms: Iterable[tuple[str, Iterable[PublishedTrack]]]) -> None:
        """Track analytics of the tracks published on this node (other nodes report theirs)."""
        now = time.monotonic()
        for room, tracks in rooms:
            for track in list(tracks):
                if not track.is_local:
                    continue
                try:
                    head, legs = track_telemetry(track, now)
                    for kind, payload in [("track", head), *(("subscription", leg) for leg in legs)]:
                        self.outbox.publish_event_nowait(self.stamp(payload, room),
                                                         subject=telemetry_room_subject(self.dc, kind, room))
                except BusUnavailable as exc:
                    log.warning("telemetry dropped: %s", exc)
                    return
                except Exception:
                    log.exception("track %s: telemetry failed", track.sid)


def _b64(message: models.ParticipantInfo | models.TrackInfo) -> str:
    return base64.b64encode(message.SerializeToString()).decode()
