"""Which media node gets a participant. Pure: fed with heartbeats, asked for a node.

A room stays on the node that already hosts it while that node has room (forwarding stays in
one process); otherwise the least loaded live, non-draining node of this DC wins."""

from __future__ import annotations

from dataclasses import dataclass

from shared.events import NodeHeartbeat


@dataclass
class NodeStatus:
    node_id: str
    dc: str
    load: float
    participants: int
    draining: bool
    last_seen: float
    interval_s: float


class NodePlacement:
    def __init__(self, missed_beats_down: float = 2.0) -> None:
        self.nodes: dict[str, NodeStatus] = {}
        self.missed_beats_down = missed_beats_down
        self.reserved: dict[str, int] = {}

    def heartbeat(self, beat: NodeHeartbeat, now: float) -> bool:
        """Records a beat; returns True if the node was not known (or was down) before."""
        known = beat.node_id in self.nodes and self.alive(beat.node_id, now)
        self.nodes[beat.node_id] = NodeStatus(beat.node_id, beat.dc, beat.load, beat.participants, beat.draining,
                                              now, beat.interval_ms / 1000)
        self.reserved.pop(beat.node_id, None)
        return not known

    def grace(self, now: float) -> None:
        """Our own view went dark (bus outage): beats we could not hear prove nothing, so every
        known node gets a fresh window instead of being declared down."""
        for node in self.nodes.values():
            node.last_seen = max(node.last_seen, now)

    def forget(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)
        self.reserved.pop(node_id, None)

    def alive(self, node_id: str, now: float) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and now - node.last_seen <= max(1.5, node.interval_s * self.missed_beats_down)

    def dead_nodes(self, now: float) -> list[str]:
        return [node_id for node_id in self.nodes if not self.alive(node_id, now)]

    def choose(self, dc: str, now: float, prefer: set[str] | frozenset[str] = frozenset(),
               capacity: int = 200) -> str | None:
        candidates = [n for n in self.nodes.values()
                      if n.dc == dc and not n.draining and self.alive(n.node_id, now)]
        if not candidates:
            return None

        def occupancy(node: NodeStatus) -> int:
            return node.participants + self.reserved.get(node.node_id, 0)

        for node in sorted(candidates, key=lambda n: n.node_id):
            if node.node_id in prefer and occupancy(node) < capacity:
                return self._reserve(node.node_id)
        # Placements since the last beat count against a node's reported load.
        best = min(candidates, key=lambda n: (max(n.load, occupancy(n) / capacity), occupancy(n), n.node_id))
        return self._reserve(best.node_id)

    def _reserve(self, node_id: str) -> str:
        # Until the next beat reports it, count the placed participant so bursts spread out.
        self.reserved[node_id] = self.reserved.get(node_id, 0) + 1
        return node_id
