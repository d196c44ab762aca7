"""One room across two media nodes of one DC: each participant on its own node, media through
the DC's relay, the room's events telling each node about the other's participants.

`--media-capacity 1` makes placement put the second participant on the second node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit import rtc

from .conftest import DevServer, start_dev_server, stop_dev_server
from .sdk_helpers import Received, count_media, publish_synthetic, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = start_dev_server(tmp_path_factory.mktemp("cross"), "--media-nodes", "2", "--media-capacity", "1")
    try:
        yield server
    finally:
        stop_dev_server(server)


async def hosting_node(server: DevServer, identity: str) -> str:
    for node in ("media-dc1-1", "media-dc1-2"):
        stats = await server.node_stats(node)
        if any(identity in people for people in stats.rooms.values()):
            return node
    raise AssertionError(f"{identity} is on no media node")


async def test_participants_on_two_nodes_see_and_hear_each_other(two_nodes: DevServer, tmp_path: Path) -> None:
    room_name = "across-nodes"
    alice, bob = rtc.Room(), rtc.Room()
    received = Received()
    count_media(bob, received)
    data: list[tuple[str, bytes]] = []
    bob.on("data_received", lambda packet: data.append((packet.topic, packet.data)))
    left: list[str] = []
    bob.on("participant_disconnected", lambda p: left.append(p.identity))
    muted: list[str] = []
    bob.on("track_muted", lambda participant, publication: muted.append(publication.sid))
    publisher = None
    try:
        await alice.connect(two_nodes.url, two_nodes.token("alice", room_name))
        await bob.connect(two_nodes.url, two_nodes.token("bob", room_name))
        nodes = {await hosting_node(two_nodes, "alice"), await hosting_node(two_nodes, "bob")}
        assert len(nodes) == 2, f"both participants landed on {nodes}"

        assert await wait_for(lambda: "alice" in {p.identity for p in bob.remote_participants.values()}, 10)
        assert await wait_for(lambda: "bob" in {p.identity for p in alice.remote_participants.values()}, 10)

        published_at = time.monotonic()
        publisher = await publish_synthetic(alice, width=640, height=360)
        assert await wait_for(lambda: received.video_frames > 0, 15), "no video frame crossed the relay"
        first_frame = time.monotonic() - published_at
        await asyncio.sleep(5)
        frames_before = received.video_frames
        await asyncio.sleep(5)
        rate = (received.video_frames - frames_before) / 5
        print(f"\ncross-node: first frame {first_frame:.2f}s after publishing, {rate:.0f} fps, "
              f"audio frames {received.audio_frames}, sizes {received.video_sizes}")
        assert rate >= 10, f"only {rate} fps across nodes"
        assert received.audio_frames > 100 and received.audio_peak > 5000

        await alice.local_participant.publish_data(b"hello across", reliable=True, topic="chat")
        await alice.local_participant.publish_data(b"lossy across", reliable=False, topic="chat",
                                                   destination_identities=["bob"])
        assert await wait_for(lambda: len(data) == 2, 10), data
        assert sorted(data) == [("chat", b"hello across"), ("chat", b"lossy across")]

        assert publisher.audio is not None
        publication = next(p for p in alice.local_participant.track_publications.values() if p.kind ==
                           rtc.TrackKind.KIND_AUDIO)
        publication.track.mute()  # type: ignore[union-attr]
        assert await wait_for(lambda: publication.sid in muted, 10)

        await publisher.stop()
        publisher = None
        await alice.disconnect()
        assert await wait_for(lambda: "alice" in left, 10)
    finally:
        if publisher is not None:
            await publisher.stop()
        await asyncio.gather(alice.disconnect(), bob.disconnect(), return_exceptions=True)
