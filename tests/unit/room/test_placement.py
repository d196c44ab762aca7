"""NodePlacement: heartbeats in, media node out."""

from __future__ import annotations

from collections import Counter

from services.room.placement import NodePlacement
from shared.events import NodeHeartbeat

T0 = 1_000.0


def beat(node_id: str, *, dc: str = "dc1", load: float = 0.0, participants: int = 0, draining: bool = False,
         interval_ms: int = 1000) -> NodeHeartbeat:
    return NodeHeartbeat(node_id=node_id, service="media", dc=dc, load=load, participants=participants,
                         draining=draining, interval_ms=interval_ms)


def test_heartbeat_reports_new_then_known() -> None:
    p = NodePlacement()
    assert p.heartbeat(beat("a"), T0) is True
    assert p.heartbeat(beat("a"), T0 + 1) is False
    status = p.nodes["a"]
    assert (status.dc, status.last_seen, status.interval_s) == ("dc1", T0 + 1, 1.0)


def test_heartbeat_after_being_down_counts_as_new() -> None:
    p = NodePlacement()
    p.heartbeat(beat("a"), T0)
    assert p.heartbeat(beat("a"), T0 + 2.5) is True
    assert p.heartbeat(beat("a"), T0 + 3.0) is False


def test_alive_window_minimum_one_and_a_half_seconds() -> None:
    p = NodePlacement()
    p.heartbeat(beat("a", interval_ms=200), T0)
    assert p.alive("a", T0 + 1.5) is True
    assert p.alive("a", T0 + 1.51) is False


def test_alive_window_scales_with_interval_and_missed_beats() -> None:
    p = NodePlacement(missed_beats_down=3.0)
    p.heartbeat(beat("a", interval_ms=5000), T0)
    assert p.alive("a", T0 + 15.0) is True
    assert p.alive("a", T0 + 15.01) is False


def test_unknown_node_not_alive() -> None:
    assert NodePlacement().alive("nope", T0) is False


def test_dead_nodes_and_forget() -> None:
    p = NodePlacement()
    p.heartbeat(beat("a"), T0)
    p.heartbeat(beat("b"), T0 + 1.5)
    assert p.dead_nodes(T0 + 1.0) == []
    assert p.dead_nodes(T0 + 3.0) == ["a"]
    assert sorted(p.dead_nodes(T0 + 10)) == ["a", "b"]
    p.forget("a")
    assert p.dead_nodes(T0 + 10) == ["b"]
    p.forget("missing")  # no error


def test_no_candidates_returns_none() -> None:
    p = NodePlacement()
    assert p.choose("dc1", T0) is None
    p.heartbeat(beat("a", dc="dc2"), T0)
    assert p.choose("dc1", T0) is None
    p.heartbeat(beat("b", draining=True), T0)
    assert p.choose("dc1", T0) is None
    p.heartbeat(beat("c"), T0)
    assert p.choose("dc1", T0 + 5) is None  # c is dead by then


def test_dc_filter() -> None:
    p = NodePlacement()
    p.heartbeat(beat("remote", dc="dc2", load=0.0), T0)
    p.heartbeat(beat("local", dc="dc1", load=0.9, participants=180), T0)
    assert p.choose("dc1", T0) == "local"
    assert p.choose("dc2", T0) == "remote"


def test_least_loaded_wins() -> None:
    p = NodePlacement()
    p.heartbeat(beat("a", load=0.5, participants=100), T0)
    p.heartbeat(beat("b", load=0.1, participants=20), T0)
    p.heartbeat(beat("c", load=0.3, participants=60), T0)
    assert p.choose("dc1", T0) == "b"


def test_tie_on_load_broken_by_occupancy_then_id() -> None:
    p = NodePlacement()
    p.heartbeat(beat("b", load=0.0, participants=0), T0)
    p.heartbeat(beat("a", load=0.0, participants=0), T0)
    assert p.choose("dc1", T0) == "a"  # id breaks the tie
    assert p.choose("dc1", T0) == "b"  # a now has a reservation


def test_draining_node_avoided_even_if_least_loaded() -> None:
    p = NodePlacement()
    p.heartbeat(beat("a", load=0.0, draining=True), T0)
    p.heartbeat(beat("b", load=0.8, participants=160), T0)
    assert p.choose("dc1", T0) == "b"


def test_dead_node_avoided() -> None:
    p = NodePlacement()
    p.heartbeat(beat("a", load=0.0), T0)
    p.heartbeat(beat("b", load=0.5), T0 + 2)
    assert p.choose("dc1", T0 + 3) == "b"


def test_prefer_node_hosting_room_under_capacity() -> None:
    p = NodePlacement()
    p.heartbeat(beat("a", load=0.0, participants=0), T0)
    p.heartbeat(beat("b", load=0.9, participants=9), T0)
    assert p.choose("dc1", T0, prefer={"b"}, capacity=10) == "b"
    # b now has 9 + 1 reserved = capacity: fall back to least loaded.
    assert p.choose("dc1", T0, prefer={"b"}, capacity=10) == "a"


def test_prefer_picks_lowest_id_among_hosting_nodes() -> None:
    p = NodePlacement()
    p.heartbeat(beat("z", load=0.0), T0)
    p.heartbeat(beat("c", load=0.7, participants=1), T0)
    p.heartbeat(beat("d", load=0.1, participants=1), T0)
    assert p.choose("dc1", T0, prefer={"d", "c"}, capacity=10) == "c"


def test_prefer_ignores_draining_dead_and_other_dc() -> None:
    p = NodePlacement()
    p.heartbeat(beat("drain", draining=True), T0)
    p.heartbeat(beat("dead"), T0 - 10)
    p.heartbeat(beat("far", dc="dc2"), T0)
    p.heartbeat(beat("ok", load=0.9, participants=5), T0)
    p.heartbeat(beat("idle", load=0.0), T0)
    assert p.choose("dc1", T0, prefer={"drain", "dead", "far", "unknown"}) == "idle"


def test_prefer_at_capacity_falls_back() -> None:
    p = NodePlacement()
    p.heartbeat(beat("full", load=1.0, participants=200), T0)
    p.heartbeat(beat("free", load=0.6, participants=120), T0)
    assert p.choose("dc1", T0, prefer={"full"}) == "free"
    assert p.choose("dc1", T0, prefer={"full"}, capacity=201) == "full"


def test_reservations_spread_a_burst_across_idle_nodes() -> None:
    p = NodePlacement()
    for node in ("a", "b", "c"):
        p.heartbeat(beat(node), T0)
    picks = Counter(p.choose("dc1", T0) for _ in range(9))
    assert picks == Counter({"a": 3, "b": 3, "c": 3})
    assert p.reserved == {"a": 3, "b": 3, "c": 3}


def test_heartbeat_clears_reservation() -> None:
    p = NodePlacement()
    p.heartbeat(beat("a"), T0)
    p.heartbeat(beat("b"), T0)
    assert [p.choose("dc1", T0) for _ in range(3)] == ["a", "b", "a"]
    assert p.reserved == {"a": 2, "b": 1}
    # a's beat reports the two placed participants (and clears its reservation).
    p.heartbeat(beat("a", participants=2), T0 + 0.5)
    assert p.reserved == {"b": 1}
    assert p.choose("dc1", T0 + 0.5) == "b"  # a: 2 participants, b: 0 + 1 reserved


def test_reservations_count_toward_preferred_capacity() -> None:
    p = NodePlacement()
    p.heartbeat(beat("host", load=0.0, participants=2), T0)
    p.heartbeat(beat("other", load=0.0, participants=0), T0)
    picks = [p.choose("dc1", T0, prefer={"host"}, capacity=5) for _ in range(5)]
    assert picks == ["host", "host", "host", "other", "other"]


def test_forget_drops_reservations() -> None:
    p = NodePlacement()
    p.heartbeat(beat("a"), T0)
    p.choose("dc1", T0)
    p.forget("a")
    assert p.reserved == {}
    assert p.nodes == {}


def test_reservations_spread_a_burst_when_loads_differ_slightly() -> None:
    # Media nodes report load = participants / capacity, so nodes almost never tie on load.
    p = NodePlacement()
    p.heartbeat(beat("a", load=10 / 200, participants=10), T0)
    p.heartbeat(beat("b", load=11 / 200, participants=11), T0)
    picks = Counter(p.choose("dc1", T0) for _ in range(20))
    # 10 + x vs 11 + (20 - x): balanced is a=15/16, b=16/15, certainly not a=30, b=11.
    assert picks["b"] >= 8
