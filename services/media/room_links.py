"""How a room hosted here hears of its other nodes: the room's events and its data packets.

Other nodes' participants come from the room's events (all DCs', via the replica stream),
history first, then live, folded by `RemoteRoomSync`. Data packets between nodes of a room go
over a core NATS subject per room; a node skips the packets it sent itself (it delivered them
locally already).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from google.protobuf.message import DecodeError
from livekit.protocol import models
from nats.aio.msg import Msg

from shared.bus import Bus
from shared.contracts.subjects import room_data_subject
from shared.events import Envelope
from shared.room_feed import RoomFeed
from shared.tasks import background

from .relay_link import RelayLink
from .remote import RemoteRoomSync
from .room import NodeRoom

log = logging.getLogger(__name__)

ORIGIN_HEADER = "Meshrtc-Node"  # the node a room data packet comes from (it delivered it locally already)
RELIABLE_HEADER = "Meshrtc-Reliable"


class RoomLinks:
    def __init__(self, bus: Bus, dc: str, node_id: str, relay_link: RelayLink, on_wanted: Callable[[], None],
                 is_hosted: Callable[[NodeRoom], bool]) -> None:
        self.bus = bus
        self.dc = dc
        self.node_id = node_id
        self.relay_link = relay_link
        self.on_wanted = on_wanted
        self.is_hosted = is_hosted
        self.feeds: dict[str, RoomFeed] = {}
        self.down_nodes: dict[str, int] = {}  # media node -> declared down at (ms), shared by every room

    def media_node_down(self, node: str, at_ms: int, rooms: list[NodeRoom]) -> None:
        self.down_nodes[node] = max(at_ms, self.down_nodes.get(node, 0))
        for room in rooms:
            if room.remote is not None:
                room.remote.node_down(node, at_ms)

    def attach(self, room: NodeRoom) -> None:
        room.remote = RemoteRoomSync(room, self.node_id, self.relay_link, self.on_wanted, self.down_nodes)

        async def on_event(env: Envelope) -> None:
            if room.remote is not None:
                room.remote.apply(env)

        feed = self.feeds[room.name] = RoomFeed(self.bus, self.dc, room.name, on_event)
        background(feed.start(), f"room-feed-{room.name}")
        background(self._subscribe_data(room), f"room-data-{room.name}")

    def detach(self, room: NodeRoom) -> None:
        feed = self.feeds.pop(room.name, None)
        if feed is not None:
            background(feed.stop(), f"room-feed-stop-{room.name}")
        if room.remote is not None:
            room.remote.close()
            room.remote = None
        if room.data_subscription is not None:
            background(room.data_subscription.unsubscribe(), f"room-data-stop-{room.name}")
            room.data_subscription = None

    async def _subscribe_data(self, room: NodeRoom) -> None:
        async def on_data(msg: Msg) -> None:
            headers = msg.headers or {}
            if headers.get(ORIGIN_HEADER) == self.node_id or not self.is_hosted(room):
                return
            try:
                packet = models.DataPacket.FromString(msg.data)
            except DecodeError:
                return
            destinations = list(packet.destination_identities) + list(packet.user.destination_identities)
            room.deliver_data(msg.data, headers.get(RELIABLE_HEADER) == "1", destinations,
                              exclude=packet.participant_sid)

        subscription = await self.bus.subscribe(room_data_subject(room.name), on_data)
        if not self.is_hosted(room):
            await subscription.unsubscribe()
        else:
            room.data_subscription = subscription

    def forward_data(self, room: NodeRoom, payload: bytes, reliable: bool) -> None:
        """A data packet from a local sender, for the room's participants on other nodes."""
        headers = {ORIGIN_HEADER: self.node_id, RELIABLE_HEADER: "1" if reliable else "0"}
        background(self.bus.publish(room_data_subject(room.name), payload, headers=headers), "room-data-out")
