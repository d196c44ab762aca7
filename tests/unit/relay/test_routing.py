from __future__ import annotations

from services.relay.routing import LinkMetrics, LinkView, RoutePolicy, Router, merge_routes
from shared.events import LinkStatus

UP, DEGRADED, DOWN = LinkStatus.UP, LinkStatus.DEGRADED, LinkStatus.DOWN
POLICY = RoutePolicy(loss_penalty_ms=500, hop_cost_ms=10, switch_ratio=0.8, switch_margin_ms=5, hold_s=1.0,
                     stable_s=2.0)


def link(rtt: float, status: LinkStatus = UP, loss: float = 0.0, up_since: float | None = -100.0) -> LinkMetrics:
    return LinkMetrics(status, rtt, loss, None if status == DOWN else up_since)


def view(d01: LinkMetrics, d02: LinkMetrics, d21: LinkMetrics) -> LinkView:
    """As seen from dc0: its own links to 1 and 2, and dc2's gossip about 2 -> 1."""
    return LinkView(own={1: d01, 2: d02}, remote={2: {1: d21, 0: d02}, 1: {2: d21, 0: d01}})


def test_direct_path_when_healthy() -> None:
    router = Router(0, 3, POLICY)
    changed = router.update(view(link(60), link(40), link(40)), now=0)
    assert changed == {1: (0, 1), 2: (0, 2)}


def test_dead_direct_link_is_left_at_once_for_the_two_hop_path() -> None:
    router = Router(0, 3, POLICY)
    router.update(view(link(60), link(40), link(40)), now=0)
    changed = router.update(view(link(60, DOWN), link(40), link(40)), now=0.1)
    assert changed == {1: (0, 2, 1)}
    assert router.update(view(link(60, DOWN), link(40, DOWN), link(40)), now=0.2) == {1: None, 2: None}


def test_loss_is_penalised() -> None:
    router = Router(0, 3, POLICY)
    router.update(view(link(20), link(20), link(20)), now=0)
    assert router.cost(view(link(20, DEGRADED, 0.3), link(20), link(20)), (0, 1)) == 20 + 150 + 10
    lossy = view(link(20, DEGRADED, 0.3), link(20), link(20))
    for step in range(12):  # 1.1 s of a clearly better detour: the hold time passes, then it switches
        router.update(lossy, now=1 + step * 0.1)
    assert router.routes[1] == (0, 2, 1)


def test_hysteresis_return_to_direct_only_after_it_is_stable_and_held() -> None:
    router = Router(0, 3, POLICY)
    router.update(view(link(60, DOWN), link(20), link(20)), now=0)
    assert router.routes[1] == (0, 2, 1)
    healed_at = 10.0
    healed = view(link(30, up_since=healed_at), link(20), link(20))
    timeline = {}
    t = healed_at
    while t < healed_at + 5:
        router.update(healed, now=t)
        timeline[round(t - healed_at, 1)] = router.routes[1]
        t += 0.1
    # not before the link has been up stable_s (2 s) and the better path held for hold_s (1 s)
    switched_at = min(at for at, route in timeline.items() if route == (0, 1))
    assert 2.9 <= switched_at <= 3.25, switched_at
    assert all(route == (0, 1) for at, route in timeline.items() if at >= switched_at)


def test_no_flap_between_near_equal_paths() -> None:
    router = Router(0, 3, POLICY)
    router.update(view(link(60, DOWN), link(20), link(21)), now=0)
    assert router.routes[1] == (0, 2, 1)  # cost 61
    # direct comes back at 55 ms (cost 65): not clearly better, so no move, ever
    for step in range(100):
        router.update(view(link(55 + step % 3), link(20), link(21)), now=1 + step * 0.1)
        assert router.routes[1] == (0, 2, 1)


def test_flapping_candidate_resets_the_hold() -> None:
    router = Router(0, 3, POLICY)
    router.update(view(link(60, DOWN), link(30), link(30)), now=0)
    good = view(link(10, up_since=-10), link(30), link(30))
    bad = view(link(10, DOWN), link(30), link(30))
    t = 0.0
    for _ in range(10):  # direct looks good 0.8 s, then blips: the 1 s hold is never reached
        for _ in range(8):
            t += 0.1
            router.update(good, now=t)
        t += 0.1
        router.update(bad, now=t)
        good = view(link(10, up_since=-10), link(30), link(30))
        assert router.routes[1] == (0, 2, 1)


def test_stale_or_unknown_gossip_means_no_two_hop_path() -> None:
    router = Router(0, 3, POLICY)
    own_only = LinkView(own={1: link(60, DOWN), 2: link(40)}, remote={})
    assert router.update(own_only, now=0) == {2: (0, 2)}
    assert 1 not in router.routes


def test_relays_that_disagree_cannot_build_a_loop() -> None:
    """dc0 believes 0-1 is down and goes via 2; dc2 believes 2-1 is down and would go via 0.
    Each route is a simple path starting at its own relay, so a datagram stamped by dc0 is
    delivered by dc2 along dc0's route (the wire rejects repeats), never handed back."""
    r0, r2 = Router(0, 3, POLICY), Router(2, 3, POLICY)
    r0.update(LinkView(own={1: link(10, DOWN), 2: link(10)}, remote={2: {1: link(10), 0: link(10)}}), now=0)
    r2.update(LinkView(own={1: link(10, DOWN), 0: link(10)}, remote={0: {1: link(10), 2: link(10)}}), now=0)
    assert r0.routes[1] == (0, 2, 1)
    assert r2.routes[1] == (2, 0, 1)
    for router in (r0, r2):
        for route in router.routes.values():
            assert len(set(route)) == len(route) and route[0] == router.self_index


def test_merge_routes_one_datagram_per_branch_point() -> None:
    merged = merge_routes({2: (0, 2), 1: (0, 2, 1), 3: (0, 3)})
    assert sorted(merged) == [((0, 2), (1, 2)), ((0, 3), (3,))]  # dc2 delivers and branches to dc1
    assert merge_routes({1: (0, 1), 2: (0, 2)}) == [((0, 1), (1,)), ((0, 2), (2,))]
    assert merge_routes({}) == []


def test_merge_routes_several_destinations_behind_one_dc() -> None:
    assert merge_routes({3: (0, 3), 1: (0, 3, 1)}) == [((0, 3), (1, 3))]
    assert merge_routes({2: (0, 3, 2), 4: (0, 3, 4)}) == [((0, 3), (2, 4))]  # dc3 not a destination
    assert merge_routes({2: (0, 3, 2)}) == [((0, 3), (2,))]


def test_merge_routes_longer_routes_ride_along() -> None:
    assert merge_routes({5: (0, 3, 2, 5), 2: (0, 3, 2)}) == [((0, 3, 2), (2, 5))]
