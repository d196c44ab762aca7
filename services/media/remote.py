"""Participants and tracks of this room hosted by other media nodes (this DC's or another's).

A `RemoteTrack` is a `PublishedTrack` whose RTP arrives from the relay instead of a publisher
PeerConnection: local subscribers attach to it exactly as to a local track, and its keyframe
requests travel back through the relay. `RemoteRoomSync` folds the room's events into the
roster and tells the node's room (a `RemoteRoomListener`) what changed: participants to
announce, tracks to register (and auto-subscribe, which is the room's decision) or drop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from livekit.protocol import models

from shared.events import Envelope, ParticipantJoined
from shared.relay_wire import stream_id

from .ports import Subscriber
from .relay_link import RelayLink
from .roster import Change, ChangeKind, RemoteParticipantState, RemoteRoster, RemoteTrackState
from .rtp.selector import RID_TO_LAYER
from .track import PublishedTrack

log = logging.getLogger(__name__)

# Packets lost between DCs (a link dying before the relays reroute) are not in any cache a
# subscriber's NACK could reach, and libwebrtc retries NACKs for seconds before it asks for a
# keyframe itself. A video sequence jump this large asks the publisher for one at once.
LOSS_KEYFRAME_PACKETS = 5


class RemoteParticipant:
    """Stands in for the publishing session of a remote track."""

    def __init__(self, state: RemoteParticipantState) -> None:
        self.state = state
        self.sid = state.sid
        self.identity = state.info.identity
        self.closed = False

    @property
    def is_local(self) -> bool:
        return False

    @property
    def hidden(self) -> bool:
        return self.state.info.permission.hidden

    def allows(self, subscriber: Subscriber, track_sid: str) -> bool:
        # Subscription permissions are enforced by the publisher's own node for its local
        # subscribers; rules set on another node are not replicated yet.
        return True


class RemoteTrack(PublishedTrack):
    def __init__(self, publisher: RemoteParticipant, state: RemoteTrackState, link: RelayLink, room: str,
                 project: str) -> None:
        super().__init__(publisher, state.info, "", state.wire, project=project, room_name=room)
        self.stream = stream_id(self.sid)
        self.link = link
        self.room_name = room
        self.project = project
        self.origin_dc = publisher.state.dc
        self.origin_node = publisher.state.node
        self.relay: tuple[str, int] | None = None  # our relay's socket, from its last subscribe answer
        self.relay_subscribed = False
        self.on_wanted: Callable[[], None] | None = None
        self._next_seq: dict[str, int] = {}  # per rid: the sequence number expected next (video)
        self._recovering: set[int] = set()  # layers that lost packets and wait for a keyframe
        self.loss_keyframes = 0

    def on_rtp(self, rid: str, packet: bytes) -> None:
        if self.kind == "video" and len(packet) > 4:
            seq = (packet[2] << 8) | packet[3]
            expected = self._next_seq.get(rid)
            if expected is not None and LOSS_KEYFRAME_PACKETS <= (seq - expected) & 0xFFFF < 0x8000:
                self.loss_keyframes += 1
                self._recovering.add(RID_TO_LAYER.get(rid, 2) if rid else self.top_layer)
            if expected is None or (seq - expected) & 0xFFFF < 0x8000:  # reordered packets do not rewind
                self._next_seq[rid] = (seq + 1) & 0xFFFF
        super().on_rtp(rid, packet)
        if self._recovering:
            source = self._source
            if source.layer in self._recovering:
                if source.keyframe:
                    self._recovering.discard(source.layer)
                else:
                    # Repeated (PLI_INTERVAL throttles it) until the keyframe comes: the first
                    # request may have gone out on the path that just died.
                    self.request_keyframe(source.layer)

    @property
    def wanted(self) -> bool:
        return bool(self._subs) and not self.closed

    def add_subscriber(self, session: Subscriber) -> None:
        first = not self._subs
        super().add_subscriber(session)
        if first and self.on_wanted is not None:
            self.on_wanted()

    def send_keyframe_request(self, layer: int, ssrc: int) -> None:
        if self.relay is not None:
            self.link.request_keyframe(self, layer, self.relay)


class RemoteRoomListener(Protocol):
    """The node's part of the room, told what changed among the participants of other nodes."""

    @property
    def name(self) -> str: ...

    def has_track(self, track_sid: str) -> bool: ...

    def local_joined_at_ms(self, identity: str) -> int | None:
        """When a session of that identity joined on this node, if one is here."""
        ...

    def remote_participant_changed(self, info: models.ParticipantInfo) -> None: ...

    def remote_track_added(self, track: RemoteTrack) -> None: ...

    def remote_track_removed(self, track: RemoteTrack) -> None: ...


class RemoteRoomSync:
    def __init__(self, room: RemoteRoomListener, node_id: str, link: RelayLink, on_wanted: Callable[[], None],
                 down_nodes: dict[str, int] | None = None) -> None:
        self.room = room
        # media node -> when it was declared down (ms): what it hosted before then is gone, even
        # while a replay of the room's history still shows it (its departures may come later).
        self.down_nodes = down_nodes if down_nodes is not None else {}
        self.roster = RemoteRoster(node_id)
        self.link = link
        self.on_wanted = on_wanted
        self.participants: dict[str, RemoteParticipant] = {}
        self.tracks: dict[str, RemoteTrack] = {}
        self._added: list[RemoteTrack] = []  # during apply(): known, not yet handed to the room

    def infos(self) -> list[models.ParticipantInfo]:
        return [p.state.info for p in self.participants.values() if not p.hidden]

    def apply(self, env: Envelope) -> None:
        if env.room != self.room.name:
            return
        payload = env.payload
        if isinstance(payload, ParticipantJoined):
            local_since = self.room.local_joined_at_ms(payload.identity)
            if local_since is not None and env.ts <= local_since:
                return  # an older incarnation of a participant that rejoined here (a room's history replayed)
            down_at = self.down_nodes.get(payload.node)
            if down_at is not None and env.ts <= down_at:
                return  # joined a node that has died since
        self._apply_changes(self.roster.apply(env), env.ts)

    def node_down(self, node: str, at_ms: int) -> None:
        """A media node was declared down: the participants it hosted are gone."""
        self.down_nodes[node] = max(at_ms, self.down_nodes.get(node, 0))
        for participant in [p for p in self.roster.participants.values() if p.node == node]:
            self._apply_changes(self.roster.remove(participant.sid), at_ms)

    def drop_identity(self, identity: str) -> None:
        """A session of this identity joined here: its incarnation on another node is gone
        (LiveKit keeps one participant per identity), whether or not its departure arrived yet."""
        older = self.roster.by_identity(identity)
        if older is not None:
            self._apply_changes(self.roster.remove(older.sid), int(time.time() * 1000))

    def _apply_changes(self, changes: list[Change], published_ms: int) -> None:
        updated: list[str] = []
        for change in changes:
            if change.kind is ChangeKind.JOINED:
                self.participants[change.participant_sid] = RemoteParticipant(
                    self.roster.participants[change.participant_sid])
                updated.append(change.participant_sid)
            elif change.kind is ChangeKind.UPDATED:
                updated.append(change.participant_sid)
            elif change.kind is ChangeKind.LEFT:
                if (gone := self.participants.pop(change.participant_sid, None)) is not None:
                    gone.closed = True
                    if not gone.hidden:
                        self.room.remote_participant_changed(gone.state.info)
            elif change.kind is ChangeKind.TRACK_ADDED:
                track = self._add_track(change.participant_sid, change.track_sid)
                if track is not None:
                    log.info("remote track %s of %s (node %s, %s) known here %d ms after it was published",
                             track.sid, track.publisher.identity, track.origin_node, track.origin_dc,
                             int(time.time() * 1000) - published_ms)
            elif change.kind is ChangeKind.TRACK_REMOVED:
                self._remove_track(change.track_sid)
        for sid in dict.fromkeys(updated):
            participant = self.participants.get(sid)
            if participant is not None and not participant.hidden:
                self.room.remote_participant_changed(participant.state.info)
        # Tracks are offered to local sessions after the participant updates that announce them.
        for track in self._added:
            self.room.remote_track_added(track)
        self._added.clear()

    def _add_track(self, participant_sid: str, track_sid: str) -> RemoteTrack | None:
        participant = self.participants.get(participant_sid)
        if participant is None or track_sid in self.tracks or self.room.has_track(track_sid):
            return None
        state = participant.state.tracks[track_sid]
        track = RemoteTrack(participant, state, self.link, self.room.name, participant.state.project)
        track.on_wanted = self.on_wanted
        self.tracks[track_sid] = track
        self.link.remote[track.stream] = track
        self._added.append(track)
        return track

    def _remove_track(self, track_sid: str) -> None:
        track = self.tracks.pop(track_sid, None)
        if track is None:
            return
        if track in self._added:
            self._added.remove(track)
        else:
            self.room.remote_track_removed(track)
        track.close()
        if self.link.remote.get(track.stream) is track:
            del self.link.remote[track.stream]

    def close(self) -> None:
        for participant_sid in list(self.participants):
            for change in self.roster.remove(participant_sid):
                if change.kind is ChangeKind.TRACK_REMOVED:
                    self._remove_track(change.track_sid)
        self.participants.clear()

    def remote_tracks(self) -> list[RemoteTrack]:
        return list(self.tracks.values())
