"""A room of real sessions on fake PeerConnections: the room coordinates, the sessions report.

No NATS server, no PeerConnection: events go to an in-memory outbox, client frames to a
recorder, and the PeerConnections are FakePeers (tests/support/media_fakes.py).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import cast

from livekit.protocol import models, rtc

from services.media.room import NodeRoom
from services.media.session import Session
from shared.contracts.control import OpenSession, PermissionSpec, RoomSpec
from tests.support.media_fakes import ClientFrames, FakePeer, MemoryBus, memory_reporter, published_media

COALESCE_WAIT = 0.15  # a little over negotiation.OFFER_COALESCE


class Host:
    """The node side of a room: data for other nodes and sessions that ended."""

    def __init__(self) -> None:
        self.closed: list[str] = []
        self.forwarded: list[bytes] = []

    def forward_data(self, room: NodeRoom, payload: bytes, reliable: bool) -> None:
        self.forwarded.append(payload)

    def session_closed(self, room: NodeRoom, session: Session) -> None:
        self.closed.append(session.sid)


class Room:
    def __init__(self) -> None:
        self.bus = MemoryBus()
        self.frames = ClientFrames()
        self.host = Host()
        self.room = NodeRoom(RoomSpec(name="standup", sid="RM_1"), memory_reporter(self.bus), self.host)
        self._sids = itertools.count(1)

    async def join(self, identity: str, answer_first_offer: bool = True, **spec: object) -> Session:
        open_spec = OpenSession(project="devkey", room=self.room.spec, participant_sid=f"PA_{identity}",
                                identity=identity, **spec)  # type: ignore[arg-type]
        session = Session(open_spec, self.room, self.frames, node_id="node-a", region="dc1",
                          new_track_sid=lambda kind: f"TR_{next(self._sids)}", make_peer=FakePeer)
        self.room.join(session)
        await session.start()
        await settle()
        if answer_first_offer:
            await self.answer(session)
        return session

    async def answer(self, session: Session) -> None:
        offer = self.frames.of(session.sid, "offer")[-1].offer
        await send(session, rtc.SignalRequest(answer=rtc.SessionDescription(
            type="answer", sdp=f"answer to {offer.id}", id=offer.id)))

    async def publish(self, session: Session, cid: str, kind: str = "audio") -> str:
        track_type = models.TrackType.AUDIO if kind == "audio" else models.TrackType.VIDEO
        await send(session, rtc.SignalRequest(add_track=rtc.AddTrackRequest(
            cid=cid, name=cid, type=track_type, source=models.TrackSource.MICROPHONE)))
        sid = self.frames.of(session.sid, "track_published")[-1].track_published.track.sid
        peer(session, "publisher").media.append(published_media(cid, kind, mid=str(len(session.tracks))))
        await send(session, rtc.SignalRequest(offer=rtc.SessionDescription(
            type="offer", sdp="client offer", id=1)))
        return sid

    def updates_of(self, viewer: Session, about: Session) -> list[models.ParticipantInfo]:
        return [info for frame in self.frames.of(viewer.sid, "update")
                for info in frame.update.participants if info.sid == about.sid]


async def send(session: Session, request: rtc.SignalRequest) -> None:
    """A frame from the session's client, handled, and its consequences delivered."""
    await session.handle_frame(request.SerializeToString())
    await settle()


def peer(session: Session, role: str) -> FakePeer:
    return cast(FakePeer, session.publisher if role == "publisher" else session.subscriber)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_join_sends_join_response_first_then_a_data_channel_offer_and_tells_the_others() -> None:
    room = Room()
    alice = await room.join("alice")
    bob = await room.join("bob")
    first = room.frames.frames[bob.sid][0]
    assert first.WhichOneof("message") == "join"
    assert [p.identity for p in first.join.other_participants] == ["alice"]
    assert peer(bob, "subscriber").channels == ["_reliable", "_lossy"]
    assert room.frames.of(bob.sid, "offer")[0].offer.id == 1
    assert room.updates_of(alice, bob), "alice was not told that bob joined"
    assert room.bus.types() == ["participant.joined", "participant.joined"]


async def test_a_published_track_is_announced_reported_and_auto_subscribed_by_the_others() -> None:
    room = Room()
    alice = await room.join("alice")
    bob = await room.join("bob")
    carol = await room.join("carol", auto_subscribe=False)
    sid = await room.publish(alice, "mic")
    assert set(room.room.tracks) == {sid}
    assert bob.subscriptions == {sid} and sid in peer(bob, "subscriber").outgoing
    assert carol.subscriptions == set()
    assert room.bus.types()[-1] == "track.published"
    assert any(info.tracks and info.tracks[0].sid == sid for info in room.updates_of(bob, alice))
    await asyncio.sleep(COALESCE_WAIT)
    assert [o.offer.id for o in room.frames.of(bob.sid, "offer")] == [1, 2]  # renegotiated for the track
    assert len(room.frames.of(carol.sid, "offer")) == 1


async def test_subscriptions_asked_for_before_the_first_answer_wait_for_it() -> None:
    room = Room()
    alice = await room.join("alice")
    bob = await room.join("bob", answer_first_offer=False)
    sid = await room.publish(alice, "mic")
    assert bob.subscriptions == set() and peer(bob, "subscriber").outgoing == {}
    await room.answer(bob)
    assert bob.subscriptions == {sid} and sid in peer(bob, "subscriber").outgoing
    await asyncio.sleep(COALESCE_WAIT)
    assert [o.offer.id for o in room.frames.of(bob.sid, "offer")] == [1, 2]


async def test_a_late_joiner_gets_the_tracks_already_published_after_its_first_answer() -> None:
    room = Room()
    alice = await room.join("alice")
    sid = await room.publish(alice, "mic")
    bob = await room.join("bob")
    assert bob.subscriptions == {sid}


async def test_the_publisher_s_subscription_permission_takes_and_gives_back_tracks() -> None:
    room = Room()
    alice = await room.join("alice")
    bob = await room.join("bob")
    carol = await room.join("carol")
    sid = await room.publish(alice, "mic")
    only_carol = rtc.SubscriptionPermission(track_permissions=[
        rtc.TrackPermission(participant_identity="carol", all_tracks=True)])
    await send(alice, rtc.SignalRequest(subscription_permission=only_carol))
    assert bob.subscriptions == set() and bob.wants(sid) and carol.subscriptions == {sid}
    assert sid in peer(bob, "subscriber").removed
    told = room.frames.of(bob.sid, "subscription_permission_update")
    assert [(u.subscription_permission_update.track_sid, u.subscription_permission_update.allowed)
            for u in told] == [(sid, False)]
    everyone = rtc.SubscriptionPermission(all_participants=True)
    await send(alice, rtc.SignalRequest(subscription_permission=everyone))
    assert bob.subscriptions == {sid}
    assert room.frames.of(bob.sid, "subscription_permission_update")[-1].subscription_permission_update.allowed


async def test_leaving_unpublishes_tells_the_room_and_reports_in_order() -> None:
    room = Room()
    alice = await room.join("alice")
    bob = await room.join("bob")
    sid = await room.publish(alice, "mic")
    await send(alice, rtc.SignalRequest(leave=rtc.LeaveRequest()))
    assert alice.closed and alice.sid not in room.room.sessions and room.host.closed == [alice.sid]
    assert room.room.tracks == {} and bob.subscriptions == set()
    assert room.updates_of(bob, alice)[-1].state == models.ParticipantInfo.State.DISCONNECTED
    types = room.bus.types()
    assert types[-2:] == ["track.unpublished", "participant.left"]
    assert types.index("track.published") < types.index("track.unpublished")
    usage = [env for env, subject in room.bus.published if subject and subject.startswith("usage.")]
    assert usage, "the last usage interval was not reported"
    assert sid not in peer(bob, "subscriber").outgoing


async def test_a_hidden_participant_is_neither_announced_nor_listed() -> None:
    room = Room()
    alice = await room.join("alice")
    recorder = await room.join("recorder", permission=PermissionSpec(hidden=True))
    bob = await room.join("bob")
    assert room.updates_of(alice, recorder) == []
    assert [p.identity for p in room.frames.of(bob.sid, "join")[0].join.other_participants] == ["alice"]


async def test_data_goes_to_the_others_here_and_to_other_nodes_only_when_they_have_participants() -> None:
    room = Room()
    alice = await room.join("alice")
    bob = await room.join("bob")
    packet = models.DataPacket(user=models.UserPacket(payload=b"hello"), kind=models.DataPacket.Kind.RELIABLE)
    peer(alice, "publisher").on_data("_reliable", packet.SerializeToString())
    sent = peer(bob, "subscriber").data_sent
    assert len(sent) == 1 and models.DataPacket.FromString(sent[0][1]).participant_identity == "alice"
    assert peer(alice, "subscriber").data_sent == []  # not echoed to the sender
    assert room.host.forwarded == []  # no participant on another node


async def test_a_stale_answer_is_not_applied() -> None:
    room = Room()
    bob = await room.join("bob")
    await send(bob, rtc.SignalRequest(answer=rtc.SessionDescription(
        type="answer", sdp="again", id=1)))
    assert peer(bob, "subscriber").answers == ["answer to 1"] and not bob.closed
