"""Path choice for the relay mesh. Pure: link metrics in, routes out.

* Candidates for destination d: the direct link and every 2-hop path self -> x -> d (the mesh is
  small and full; longer detours add more delay than they save).
* Cost = sum over links of RTT + `loss_penalty_ms` x loss (10 % loss costs like 50 ms of RTT)
  + `hop_cost_ms` (each relay hop adds processing, jitter and a failure point, so between
  near-equal paths the one with fewer hops wins, e.g. inside one region).
* Hysteresis: a usable current path is kept unless another is clearly cheaper (below
  `switch_ratio` x current - `switch_margin_ms`) for `hold_s` in a row *and* all of its links
  have been up for `stable_s`; only a dead current path is left at once. So a flapping link does
  not pull traffic back and forth, and traffic returns to a healed direct link after it proved
  itself.
* `merge_routes` turns per-destination routes into the datagrams to send: a destination whose
  route is a prefix of another's rides that one (its DC set in `deliver`), so one copy crosses
  each link.

Routes are tuples of DC indices, self first. Whatever relays believe, the datagram carries the
route, so disagreement can cost a detour, never a loop (wire.check_route).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from shared.events import LinkStatus

Route = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LinkMetrics:
    status: LinkStatus
    rtt_ms: float = 0.0
    loss: float = 0.0
    up_since: float | None = None  # monotonic time it last became usable; None while down

    @property
    def usable(self) -> bool:
        return self.status != LinkStatus.DOWN

    def up_for(self, now: float) -> float:
        return 0.0 if self.up_since is None else max(0.0, now - self.up_since)


DOWN = LinkMetrics(LinkStatus.DOWN)


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    loss_penalty_ms: float = 500.0
    hop_cost_ms: float = 10.0
    switch_ratio: float = 0.8
    switch_margin_ms: float = 5.0
    hold_s: float = 1.0
    stable_s: float = 2.0


class LinkView:
    """What one relay knows: its own links (probes) and each peer's links (gossip)."""

    def __init__(self, own: dict[int, LinkMetrics] | None = None,
                 remote: dict[int, dict[int, LinkMetrics]] | None = None) -> None:
        self.own = own or {}
        self.remote = remote or {}

    def link(self, self_index: int, a: int, b: int) -> LinkMetrics:
        if a == self_index:
            return self.own.get(b, DOWN)
        return self.remote.get(a, {}).get(b, DOWN)


@dataclass
class Router:
    self_index: int
    dc_count: int
    policy: RoutePolicy = field(default_factory=RoutePolicy)
    routes: dict[int, Route] = field(default_factory=dict)
    _pending: dict[int, tuple[Route, float]] = field(default_factory=dict)

    def candidates(self, dest: int) -> list[Route]:
        others = [x for x in range(self.dc_count) if x not in (self.self_index, dest)]
        return [(self.self_index, dest), *((self.self_index, x, dest) for x in others)]

    def cost(self, view: LinkView, route: Route) -> float | None:
        """None when a link of `route` is down (or unknown)."""
        total = 0.0
        for a, b in pairwise(route):
            link = view.link(self.self_index, a, b)
            if not link.usable:
                return None
            total += link.rtt_ms + self.policy.loss_penalty_ms * link.loss + self.policy.hop_cost_ms
        return total

    def stable(self, view: LinkView, route: Route, now: float) -> bool:
        return all(view.link(self.self_index, a, b).up_for(now) >= self.policy.stable_s
                   for a, b in pairwise(route))

    def update(self, view: LinkView, now: float) -> dict[int, Route | None]:
        """Recompute every destination's route; returns the ones that changed (None: no route)."""
        changed: dict[int, Route | None] = {}
        for dest in range(self.dc_count):
            if dest == self.self_index:
                continue
            before = self.routes.get(dest)
            after = self._choose(view, dest, before, now)
            if after != before:
                changed[dest] = after
                if after is None:
                    self.routes.pop(dest, None)
                else:
                    self.routes[dest] = after
        return changed

    def _choose(self, view: LinkView, dest: int, current: Route | None, now: float) -> Route | None:
        costed = [(cost, len(route), route) for route in self.candidates(dest)
                  if (cost := self.cost(view, route)) is not None]
        if not costed:
            self._pending.pop(dest, None)
            return None
        costed.sort()
        current_cost = self.cost(view, current) if current is not None else None
        if current is None or current_cost is None:
            self._pending.pop(dest, None)
            stable = [c for c in costed if self.stable(view, c[2], now)]
            return (stable or costed)[0][2]
        best_cost, _, best = costed[0]
        threshold = current_cost * self.policy.switch_ratio - self.policy.switch_margin_ms
        if best == current or best_cost >= threshold or not self.stable(view, best, now):
            self._pending.pop(dest, None)
            return current
        pending = self._pending.get(dest)
        if pending is None or pending[0] != best:
            self._pending[dest] = (best, now)
            return current
        if now - pending[1] >= self.policy.hold_s:
            del self._pending[dest]
            return best
        return current


def merge_routes(routes: dict[int, Route]) -> list[tuple[Route, tuple[int, ...]]]:
    """Per-destination routes -> [(route, destinations delivered)], one datagram each: a
    distribution tree, so a link carries one copy however many destinations lie behind it.

    * Destinations reached through the same relay share one datagram routed to that relay; as the
      last relay of the route it sends a copy over its direct link to each of them (the `deliver`
      DCs that are not on the route). dc2 and dc4 both behind dc3: one copy dc1 -> dc3.
    * A datagram whose destinations all lie on a longer datagram's route rides that one
      (dc3 a destination itself and dc2 behind it: one datagram, delivered at dc3 and dc2).
    """
    groups: dict[Route, set[int]] = {}
    for dest, route in routes.items():
        branch_at = route[:-1]
        groups.setdefault(branch_at if len(branch_at) >= 2 else route, set()).add(dest)
    merged: list[tuple[Route, set[int]]] = []
    for route in sorted(groups, key=lambda r: (-len(r), r)):
        dests = groups[route]
        for longer, longer_dests in merged:
            if longer[:len(route)] == route and dests <= set(longer):
                longer_dests.update(dests)
                break
        else:
            merged.append((route, set(dests)))
    return [(route, tuple(sorted(dests))) for route, dests in merged]
