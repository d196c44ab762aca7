from __future__ import annotations

from services.relay.subscriptions import Subscriptions, TrackRef

REF = TrackRef("TR_a", "room", "proj", "dc1", "node-1")
NODE_A, NODE_B = ("10.0.0.1", 5000), ("10.0.0.2", 5000)


def test_local_subscribers_lapse_without_repeats() -> None:
    subs = Subscriptions()
    assert subs.add_local(1, REF, NODE_A, 5, now=0) is True
    assert subs.add_local(1, REF, NODE_A, 5, now=1) is False  # a refresh changes no target
    assert subs.add_local(1, REF, NODE_B, 5, now=2) is True
    assert subs.expire(6.5) == {1}  # NODE_A (last repeat at 1, ttl 5) lapsed
    assert set(subs.get(1).local) == {NODE_B}  # type: ignore[union-attr]
    assert subs.expire(7.5) == {1}
    assert subs.get(1) is None


def test_ttl_zero_unsubscribes_and_unknown_ttl_zero_is_a_no_op() -> None:
    subs = Subscriptions()
    assert subs.add_local(1, REF, NODE_A, 0, now=0) is False
    assert subs.get(1) is None
    subs.add_local(1, REF, NODE_A, 5, now=0)
    assert subs.add_local(1, REF, NODE_A, 0, now=1) is True
    assert subs.get(1) is None


def test_remote_destinations_keep_the_stream_alive() -> None:
    subs = Subscriptions()
    assert subs.add_remote(1, REF, "dc2", 3, now=0) is True
    assert subs.add_remote(1, REF, "dc3", 3, now=0) is True
    subs.add_remote(1, REF, "dc2", 3, now=2)
    assert subs.expire(3.5) == {1}
    assert set(subs.get(1).remote) == {"dc2"}  # type: ignore[union-attr]
    assert subs.local_count == 0


def test_a_track_that_moved_to_another_node_counts_as_a_change() -> None:
    subs = Subscriptions()
    subs.add_local(1, REF, NODE_A, 5, now=0)
    moved = TrackRef("TR_a", "room", "proj", "dc1", "node-2")
    assert subs.add_local(1, moved, NODE_A, 5, now=1) is True
    assert subs.get(1).ref == moved  # type: ignore[union-attr]
    assert subs.add_local(1, moved, NODE_A, 5, now=2) is False
