"""Room services of two DCs (in-process, each with its own nats-server in its own JetStream
domain and its own SQLite store) agree on rooms that span both DCs.

The media nodes are stand-ins on the real bus: they beat, publish the participant events a
media node publishes, and answer `ctl.media.<node>.command` (recording it). Webhooks of both
DCs go to one receiver that verifies their signatures."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from livekit.protocol import models

from services.room.app import RoomService
from shared.config import Settings
from shared.contracts.control import JoinAdmission, JoinRequest
from shared.contracts.media_commands import CommandResult, MediaCommand, RemoveParticipant, decode_media_command
from shared.contracts.subjects import heartbeat_subject, media_node_subject, room_request_subject
from shared.db import upgrade
from shared.events import Envelope, NodeHeartbeat, ParticipantActive, ParticipantJoined, ParticipantLeft
from tests.e2e.conftest import API_KEY, API_SECRET
from tests.e2e.test_webhooks import Receiver
from tests.support.mesh import Mesh, run_mesh
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.timeout(180), pytest.mark.filterwarnings("ignore:.*HMAC key.*")]

DCS = ["dc1", "dc2"]



def sent_to(receiver: Receiver, room: str) -> list[tuple[str, str]]:
    return [(e.event, e.participant.identity) for e in receiver.events if e.room.name == room]


@dataclass
class MediaStandIn:
    """What the room service sees of a media node: beats, its participants' events, commands."""

    service: RoomService
    node: str
    commands: list[MediaCommand] = field(default_factory=list)
    identities: dict[str, str] = field(default_factory=dict)  # participant sid -> identity
    _task: asyncio.Task[None] | None = None

    @property
    def dc(self) -> str:
        return self.service.settings.dc

    async def start(self) -> None:
        bus = self.service.bus
        assert bus is not None
        await bus.serve(media_node_subject(self.node, "command"), self._on_command)

        async def beat() -> None:
            while True:
                env = Envelope.new(NodeHeartbeat(node_id=self.node, service="media", dc=self.dc, interval_ms=500),
                                   dc=self.dc, node=self.node)
                with contextlib.suppress(Exception):  # (its service's bus may be closed by a restart)
                    await bus.publish(heartbeat_subject(self.dc, "media"), env.to_json())
                await asyncio.sleep(0.2)

        self._task = asyncio.create_task(beat())
        await wait_until(lambda: self.node in self.service.placement.nodes, 10, f"{self.node} heard")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _on_command(self, data: bytes) -> bytes:
        command = decode_media_command(data)
        self.commands.append(command)
        if isinstance(command, RemoveParticipant) and command.participant_sid in self.identities:
            await self.publish(ParticipantLeft(sid=command.participant_sid,
                                               identity=self.identities.pop(command.participant_sid),
                                               reason=models.DisconnectReason.Name(command.reason)), command.room)
        return CommandResult().encode()

    async def publish(self, payload: object, room: str) -> None:
        assert self.service.bus is not None
        await self.service.bus.publish_event(Envelope.new(payload, dc=self.dc, node=self.node, room=room))  # type: ignore[arg-type]

    async def join(self, room: str, identity: str, **room_config: object) -> JoinAdmission:
        """Admission by this DC's room service, then the session's events, as signal+media do."""
        assert self.service.bus is not None
        raw = await self.service.bus.request(
            room_request_subject(self.dc, "join"),
            JoinRequest(project=API_KEY, room=room, identity=identity, room_config=room_config).encode(), timeout=5)
        admission = JoinAdmission.decode(raw)
        assert admission.ok, admission.error
        assert admission.node_id == self.node and admission.room is not None
        self.identities[admission.participant_sid] = identity
        await self.publish(ParticipantJoined(sid=admission.participant_sid, room_sid=admission.room.sid,
                                             identity=identity, node=self.node), room)
        await self.publish(ParticipantActive(sid=admission.participant_sid, identity=identity), room)
        return admission

    async def leave(self, sid: str, room: str) -> None:
        await self.publish(ParticipantLeft(sid=sid, identity=self.identities.pop(sid), reason="CLIENT_INITIATED"),
                           room)


@dataclass
class TwoDcs:
    mesh: Mesh
    rooms: dict[str, RoomService]
    media: dict[str, MediaStandIn]
    receiver: Receiver

    def participants(self, dc: str, room: str) -> set[str]:
        state = self.rooms[dc].registry.rooms.get(room)
        return {p.identity for p in state.participants.values()} if state else set()

    def sid(self, dc: str, room: str) -> str | None:
        state = self.rooms[dc].registry.rooms.get(room)
        return state.sid if state else None


@pytest.fixture
async def two_dcs(tmp_path: Path) -> AsyncIterator[TwoDcs]:
    receiver = Receiver()
    await receiver.up()
    async with run_mesh(tmp_path / "nats", DCS) as mesh, contextlib.AsyncExitStack() as stack:
        await asyncio.sleep(1.0)
        rooms: dict[str, RoomService] = {}
        media: dict[str, MediaStandIn] = {}
        for dc in DCS:
            db = f"sqlite:///{tmp_path}/{dc}.db"
            await asyncio.to_thread(upgrade, db)
            service = RoomService(Settings(nats_url=mesh[dc].url, dc=dc, datacenters=DCS, node_id=f"room-{dc}",
                                           database_url=db, api_keys={API_KEY: API_SECRET},
                                           webhook_urls=[receiver.url], heartbeat_ms=500))
            await service.start()
            stack.push_async_callback(service.stop)
            rooms[dc] = service
            media[dc] = MediaStandIn(service, f"media-{dc}")
            await media[dc].start()
            stack.push_async_callback(media[dc].stop)
        yield TwoDcs(mesh, rooms, media, receiver)
    await receiver.down()


async def test_a_room_spanning_two_dcs(two_dcs: TwoDcs) -> None:
    dcs, room = two_dcs, "standup"
    alice = await dcs.media["dc1"].join(room, "alice", maxParticipants=3, departureTimeout=1, emptyTimeout=60)
    assert alice.room is not None
    await wait_until(lambda: dcs.participants("dc2", room) == {"alice"}, 10, "dc2 to see alice")
    bob = await dcs.media["dc2"].join(room, "bob")
    assert bob.room is not None and bob.room.sid == alice.room.sid  # one room, not a second creation
    carol = await dcs.media["dc2"].join(room, "carol")
    for dc in DCS:
        await wait_until(lambda dc=dc: dcs.participants(dc, room) == {"alice", "bob", "carol"}, 10,
                         f"{dc} to see all three")
    assert dcs.sid("dc1", room) == dcs.sid("dc2", room) == alice.room.sid

    # max_participants (3) counts every DC
    raw = await dcs.rooms["dc1"].bus.request(  # type: ignore[union-attr]
        room_request_subject("dc1", "join"), JoinRequest(project=API_KEY, room=room, identity="dave").encode())
    assert JoinAdmission.decode(raw).error == "room is full"

    # alice joins again, in dc2: dc1 (which hosts her old session) evicts it
    alice_again = await dcs.media["dc2"].join(room, "alice")
    await wait_until(lambda: any(c.op == "remove" for c in dcs.media["dc1"].commands), 10, "dc1 to evict alice")
    [evict] = [c for c in dcs.media["dc1"].commands if c.op == "remove"]
    assert (evict.participant_sid, evict.reason) == (alice.participant_sid, models.DisconnectReason.DUPLICATE_IDENTITY)
    for dc in DCS:
        await wait_until(lambda dc=dc: {p.sid for p in dcs.rooms[dc].registry.rooms[room].participants.values()}
                         == {alice_again.participant_sid, bob.participant_sid, carol.participant_sid}, 10,
                         f"{dc} to swap alice's sessions")

    # the owner DC (dc1, where the room was created) has no participant of its own left, but the
    # room has participants in dc2: it stays, well past its 1 s departure timeout
    await asyncio.sleep(3)
    assert dcs.sid("dc1", room) == dcs.sid("dc2", room) == alice.room.sid
    for admission in (alice_again, bob, carol):
        await dcs.media["dc2"].leave(admission.participant_sid, room)
    for dc in DCS:
        await wait_until(lambda dc=dc: room not in dcs.rooms[dc].registry.rooms, 10, f"{dc} to finish the room")

    # each webhook exactly once across both DCs' senders
    await wait_until(lambda: ("room_finished", "") in sent_to(dcs.receiver, room), 15, "room_finished")
    await asyncio.sleep(1.5)  # a doubled webhook would arrive by now
    ids = Counter(e.id for e in dcs.receiver.events)
    assert [i for i, n in ids.items() if n > 1] == []
    sent = Counter(sent_to(dcs.receiver, room))
    assert sent == Counter({
        ("room_started", ""): 1, ("room_finished", ""): 1,
        ("participant_joined", "alice"): 2, ("participant_joined", "bob"): 1, ("participant_joined", "carol"): 1,
        ("participant_left", "alice"): 2, ("participant_left", "bob"): 1, ("participant_left", "carol"): 1,
    }), sent


async def test_room_created_in_both_dcs_while_cut_converges_after_heal(two_dcs: TwoDcs) -> None:
    dcs, room = two_dcs, "split"
    dcs.mesh.cut("dc2")
    await asyncio.sleep(4)  # the servers notice (ping 1 s x 2)
    a = await dcs.media["dc1"].join(room, "alice")
    b = await dcs.media["dc2"].join(room, "bob")  # dc2 alone still admits: it creates its own room
    assert a.room is not None and b.room is not None and a.room.sid != b.room.sid
    await asyncio.sleep(1)
    assert dcs.participants("dc1", room) == {"alice"} and dcs.participants("dc2", room) == {"bob"}

    healed = time.monotonic()
    dcs.mesh.heal("dc2")
    for dc in DCS:
        await wait_until(lambda dc=dc: dcs.participants(dc, room) == {"alice", "bob"}, 15, f"{dc} to converge")
    took = time.monotonic() - healed
    winner = dcs.rooms["dc1"].registry.rooms[room]
    assert dcs.sid("dc1", room) == dcs.sid("dc2", room) == winner.sid
    assert winner.sid in (a.room.sid, b.room.sid) and winner.merged_sids == sorted({a.room.sid, b.room.sid}
                                                                                     - {winner.sid})
    assert took < 10, f"converged {took:.1f}s after the heal"
    # a join after convergence gets the one sid, in either DC
    carol = await dcs.media["dc2"].join(room, "carol")
    assert carol.room is not None and carol.room.sid == winner.sid
    await wait_until(lambda: dcs.participants("dc1", room) == {"alice", "bob", "carol"}, 10, "dc1 to see carol")

    # a restarted room service rebuilds the same state from its SQL store (events of both DCs,
    # each stored once) and its durable consumer
    old = dcs.rooms["dc2"]
    await old.stop()
    restarted = RoomService(old.settings)
    await restarted.start()
    try:
        state = restarted.registry.rooms[room]
        assert (state.sid, state.merged_sids) == (winner.sid, winner.merged_sids)
        assert {p.identity for p in state.participants.values()} == {"alice", "bob", "carol"}
        assert restarted.store is not None
        stored = [s.envelope for s in await asyncio.to_thread(restarted.store.read) if s.envelope.room == room]
        assert {e.dc for e in stored} == {"dc1", "dc2"}
        assert len({e.id for e in stored}) == len(stored)
    finally:
        await restarted.stop()  # (the fixture's second stop of `old` is a no-op)
