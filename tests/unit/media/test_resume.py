"""What a detached session keeps for its client's resume (services/media/resume.py)."""

from __future__ import annotations

from livekit.protocol import models, rtc

from services.media.resume import (
    Detachment,
    ReliableLog,
    catch_up_update,
    receive_states,
    wanted_subscriptions,
)


def packet(sender: str, sequence: int, body: bytes = b"x") -> bytes:
    return models.DataPacket(participant_sid=sender, sequence=sequence,
                             user=models.UserPacket(payload=body)).SerializeToString()


def test_reliable_log_returns_only_what_each_sender_has_not_delivered() -> None:
    log = ReliableLog()
    for seq in range(1, 6):
        log.record(packet("PA_a", seq))
        log.record(packet("PA_b", seq))
    log.record(packet("PA_a", 0))  # unsequenced: cannot be matched, never resent
    log.record(b"\xff\xfe not a packet")
    assert log.missed({"PA_a": 3, "PA_b": 5}) == [packet("PA_a", 4), packet("PA_a", 5)]
    assert log.missed({"PA_b": 0}) == [packet("PA_b", seq) for seq in range(1, 6)]
    assert log.missed({}) == []  # a sender the client does not report is not replayed


def test_reliable_log_is_bounded_by_count_and_bytes() -> None:
    log = ReliableLog(max_packets=3, max_bytes=10_000)
    for seq in range(1, 11):
        log.record(packet("PA_a", seq))
    assert len(log) == 3 and log.missed({"PA_a": 0}) == [packet("PA_a", seq) for seq in (8, 9, 10)]
    size = len(packet("PA_a", 1, b"y" * 100))
    big = ReliableLog(max_packets=100, max_bytes=2 * size + 10)
    for seq in range(1, 5):
        big.record(packet("PA_a", seq, b"y" * 100))
    assert big.missed({"PA_a": 0}) == [packet("PA_a", seq, b"y" * 100) for seq in (3, 4)]
    big.record(b"z" * (3 * size))  # larger than the whole log: not kept, nothing evicted
    assert len(big) == 2


def test_detachment_keeps_departures_and_counts_dropped_frames() -> None:
    detached = Detachment(since=0.0)
    gone = models.ParticipantInfo(sid="PA_gone", identity="g", state=models.ParticipantInfo.State.DISCONNECTED)
    here = models.ParticipantInfo(sid="PA_here", identity="h", state=models.ParticipantInfo.State.ACTIVE)
    detached.missed(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[gone, here])))
    detached.missed(rtc.SignalResponse(offer=rtc.SessionDescription(type="offer", sdp="v=0", id=3)))
    assert list(detached.departed) == ["PA_gone"] and detached.dropped_frames == 2


def test_catch_up_update_lists_everyone_now_and_who_left() -> None:
    me = models.ParticipantInfo(sid="PA_me", identity="me", version=7)
    other = models.ParticipantInfo(sid="PA_o", identity="o", version=3)
    gone = models.ParticipantInfo(sid="PA_g", identity="g", state=models.ParticipantInfo.State.DISCONNECTED)
    update = catch_up_update([other, me], {"PA_g": gone, "PA_o": other}).update
    assert [(p.sid, p.state) for p in update.participants] == [
        ("PA_o", models.ParticipantInfo.State.JOINING), ("PA_me", models.ParticipantInfo.State.JOINING),
        ("PA_g", models.ParticipantInfo.State.DISCONNECTED)]


def test_catch_up_update_leaves_out_the_departure_of_an_identity_that_is_back() -> None:
    back = models.ParticipantInfo(sid="PA_new", identity="g")
    gone = models.ParticipantInfo(sid="PA_old", identity="g", state=models.ParticipantInfo.State.DISCONNECTED)
    update = catch_up_update([back], {"PA_old": gone}).update
    assert [p.sid for p in update.participants] == ["PA_new"]  # livekit-client keys by identity


def test_node_room_remembers_the_last_departures_it_told() -> None:
    from services.media.room import RECENT_DEPARTURES, NodeRoom
    from shared.contracts.control import RoomSpec

    room = NodeRoom(RoomSpec(name="r"))
    left = models.ParticipantInfo(sid="PA_l", identity="l", state=models.ParticipantInfo.State.DISCONNECTED)
    room.broadcast_participant(models.ParticipantInfo(sid="PA_a", identity="a"))
    room.broadcast_participant(left)
    room.broadcast_participant(models.ParticipantInfo(sid="PA_h", identity="h",
                                                      state=models.ParticipantInfo.State.DISCONNECTED), hidden=True)
    left.identity = "changed later"
    assert {sid: info.identity for sid, info in room.recent_departures().items()} == {"PA_l": "l"}
    for n in range(RECENT_DEPARTURES + 5):
        room.broadcast_participant(models.ParticipantInfo(
            sid=f"PA_{n}", identity=str(n), state=models.ParticipantInfo.State.DISCONNECTED))
    assert len(room.recent_departures()) == RECENT_DEPARTURES and "PA_l" not in room.recent_departures()


def test_sync_state_views() -> None:
    sync = rtc.SyncState(
        subscription=rtc.UpdateSubscription(subscribe=False, track_sids=["TR_1"], participant_tracks=[
            models.ParticipantTracks(participant_sid="PA_x", track_sids=["TR_2", "TR_1"])]),
        datachannel_receive_states=[rtc.DataChannelReceiveState(publisher_sid="PA_x", last_seq=12)])
    assert wanted_subscriptions(sync) == (False, {"TR_1", "TR_2"})
    assert receive_states(sync) == {"PA_x": 12}
