"""What a session keeps so its client can resume after the signal WebSocket dropped.

LiveKit clients whose WebSocket closes (network change, a signal instance restarted) reconnect
with `reconnect=1&sid=...` and expect the server to still hold their participant: the media
node keeps the session *detached* for a grace period instead of closing it. While detached,
frames for the client go nowhere, so on resume the client is brought up to date from state
rather than from a replay: everyone's current ParticipantInfo, plus DISCONNECTED entries for
those who left meanwhile (:class:`Detachment` keeps them), and reliable data it did not get
(:class:`ReliableLog`, keyed by the sender's sequence, as `SyncState.datachannel_receive_states`
reports what the client received). Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc

RELIABLE_LOG_PACKETS = 512  # reliable packets kept per receiving session
RELIABLE_LOG_BYTES = 1 << 20


class ReliableLog:
    """The last reliable data packets delivered to one client, bounded by count and bytes.
    Recording is an append; packets are only decoded on a resume, to match receive states."""

    def __init__(self, max_packets: int = RELIABLE_LOG_PACKETS, max_bytes: int = RELIABLE_LOG_BYTES) -> None:
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self._packets: deque[bytes] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._packets)

    def record(self, payload: bytes) -> None:
        if len(payload) > self.max_bytes:
            return
        self._packets.append(payload)
        self._bytes += len(payload)
        while len(self._packets) > self.max_packets or self._bytes > self.max_bytes:
            self._bytes -= len(self._packets.popleft())

    def missed(self, received: dict[str, int]) -> list[bytes]:
        """Packets (DataPacket, server-stamped sender sid and the sender's sequence) from the
        senders in `received` (sender sid -> last sequence the client got) with a later
        sequence, in delivery order. Unsequenced packets cannot be matched and are not resent."""
        out = []
        for payload in self._packets:
            try:
                packet = models.DataPacket.FromString(payload)
            except DecodeError:
                continue
            sender = packet.participant_sid
            if packet.sequence and sender in received and packet.sequence > received[sender]:
                out.append(payload)
        return out


def receive_states(sync: rtc.SyncState) -> dict[str, int]:
    return {state.publisher_sid: state.last_seq for state in sync.datachannel_receive_states}


@dataclass
class Detachment:
    """A session between losing its WebSocket and either a resume or the end of its grace."""

    since: float
    departed: dict[str, models.ParticipantInfo] = field(default_factory=dict)
    dropped_frames: int = 0

    def missed(self, response: rtc.SignalResponse) -> None:
        """A frame the client will not get: departures are kept for the resume, the rest is
        rebuilt from state then."""
        self.dropped_frames += 1
        if response.WhichOneof("message") != "update":
            return
        for info in response.update.participants:
            if info.state == models.ParticipantInfo.State.DISCONNECTED:
                self.departed[info.sid] = info
            else:
                self.departed.pop(info.sid, None)  # (a sid never comes back, but be exact)


def catch_up_update(current: list[models.ParticipantInfo], departed: dict[str, models.ParticipantInfo]) \
        -> rtc.SignalResponse:
    """One ParticipantUpdate with everyone as they are now and who left while detached. A
    departure of an identity that is present again is left out: livekit-client keys participants
    by identity, so it would remove the one who came back."""
    present = {info.sid for info in current} | {info.identity for info in current}
    participants = list(current) + [info for sid, info in departed.items()
                                    if sid not in present and info.identity not in present]
    return rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=participants))


def wanted_subscriptions(sync: rtc.SyncState) -> tuple[bool, set[str]]:
    """SyncState.subscription: (subscribe?, track sids) whose desired state differs from
    auto-subscribe, as the client last asked."""
    update = sync.subscription
    sids = set(update.track_sids)
    for participant_tracks in update.participant_tracks:
        sids.update(participant_tracks.track_sids)
    return update.subscribe, sids
