"""What the media node's lower layers need from the layers above them.

A track is lower than the session that publishes or subscribes to it, and a session is lower
than the room that coordinates it. Each lower layer calls upward only through the Protocols
declared here (or, for room and session, in their own modules), so no module imports the layer
above it and each layer can be unit-tested with small hand-written fakes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol

from livekit.protocol import rtc

from .webrtc.peer import OutgoingTrack


class OutgoingPeer(Protocol):
    """The subscriber PeerConnection of a session, as a track uses it to add its leg."""

    def add_outgoing(self, kind: str, track_id: str, stream_id: str, *, codecs: Sequence[str] | None = None,
                     rtx: bool = True) -> OutgoingTrack: ...

    async def remove_outgoing(self, track: OutgoingTrack | str) -> None: ...


class Subscriber(Protocol):
    """A session receiving a track: the track adds its leg to the session's subscriber PeerConnection."""

    sid: str
    identity: str
    closed: bool

    @property
    def subscriber(self) -> OutgoingPeer: ...

    def spawn(self, coro: Awaitable[object], name: str) -> None: ...


class Publisher(Protocol):
    """Who publishes a track: a session on this node, or a participant hosted by another node."""

    sid: str
    identity: str

    @property
    def is_local(self) -> bool: ...

    def allows(self, subscriber: Subscriber, track_sid: str) -> bool:
        """May this subscriber receive that track (the publisher's subscription permission)?"""
        ...


class PublisherFeedback(Protocol):
    """How a local track talks back to its publisher's client: RTCP (keyframe requests) on the
    publisher PeerConnection, signal frames (dynacast's subscribed-quality updates)."""

    def send(self, response: rtc.SignalResponse) -> None: ...

    def send_rtcp(self, packet: bytes) -> None: ...
