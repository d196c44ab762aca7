"""Link monitor: probes every peer relay, measures RTT and loss, says when a link is down, and
keeps the link tables peers gossip to us. Pure (times are passed in; the caller sends the bytes).

* A probe goes to every peer every `interval` (100 ms) and carries our own link table (the gossip);
  the peer echoes its sequence number and send time, so RTT needs no synchronised clocks.
* RTT is an EWMA (1/8) of the echoes; loss is the share of unanswered probes over `loss_window`
  (2 s), counting only probes old enough to have been answered.
* A link is DOWN when the last `down_after` (3) probes went unanswered for twice the RTT (at
  least 50 ms) each: about 250-350 ms after a cut on a short link, so a dead link is rerouted
  well under a second. DEGRADED above `degraded_loss`.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

from services.relay.routing import DOWN, LinkMetrics
from shared.errors import RelayError
from shared.events import LinkStatus

PROBE_HEAD = struct.Struct("!Id")  # sequence, sender's monotonic send time (echoed back)
GOSSIP_ENTRY = struct.Struct("!BBHHI")  # peer index, status, rtt in 0.1 ms, loss in 1e-4, up for ms
_STATUS_CODE = {LinkStatus.UP: 0, LinkStatus.DEGRADED: 1, LinkStatus.DOWN: 2}
_CODE_STATUS = {code: status for status, code in _STATUS_CODE.items()}


class ProbeError(RelayError, ValueError):
    pass


def encode_table(table: dict[int, LinkMetrics], now: float) -> bytes:
    return b"".join(GOSSIP_ENTRY.pack(peer, _STATUS_CODE[m.status], min(65535, round(m.rtt_ms * 10)),
                                      min(10000, round(m.loss * 10000)), min(2**32 - 1, round(m.up_for(now) * 1000)))
                    for peer, m in sorted(table.items()))


def decode_table(raw: bytes, now: float) -> dict[int, LinkMetrics]:
    if len(raw) % GOSSIP_ENTRY.size:
        raise ProbeError(f"link table of {len(raw)} bytes is not a whole number of entries")
    table: dict[int, LinkMetrics] = {}
    for peer, code, rtt, loss, up_ms in GOSSIP_ENTRY.iter_unpack(raw):
        status = _CODE_STATUS.get(code)
        if status is None:
            raise ProbeError(f"unknown link status code {code}")
        up_since = None if status == LinkStatus.DOWN else now - up_ms / 1000
        table[peer] = LinkMetrics(status, rtt / 10, loss / 10000, up_since)
    return table


@dataclass
class PeerLink:
    """Probe state of one link (self -> peer)."""

    seq: int = 0
    sent: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=64))
    answered: set[int] = field(default_factory=set)
    rtt_ms: float | None = None
    last_reply: float | None = None
    status: LinkStatus = LinkStatus.DOWN
    up_since: float | None = None


@dataclass
class LinkMonitor:
    self_index: int
    peers: list[int]
    interval: float = 0.1
    loss_window: float = 2.0
    down_after: int = 3
    degraded_loss: float = 0.1
    gossip_stale: float = 1.0  # a peer's table older than this is ignored (its links count as down)
    links: dict[int, PeerLink] = field(default_factory=dict)
    gossip: dict[int, tuple[float, dict[int, LinkMetrics]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.links = {peer: PeerLink() for peer in self.peers}

    # -- probing -------------------------------------------------------------------------

    def make_probe(self, peer: int, now: float) -> bytes:
        link = self.links[peer]
        link.seq = (link.seq + 1) & 0xFFFFFFFF
        link.sent.append((link.seq, now))
        return PROBE_HEAD.pack(link.seq, now) + encode_table(self.table(now), now)

    def on_probe(self, peer: int, body: bytes, now: float) -> bytes:
        """A peer's probe: store its link table, return the echo to send back."""
        if len(body) < PROBE_HEAD.size:
            raise ProbeError(f"probe of {len(body)} bytes")
        self.gossip[peer] = (now, decode_table(body[PROBE_HEAD.size:], now))
        return body[:PROBE_HEAD.size]

    def on_reply(self, peer: int, body: bytes, now: float) -> None:
        if len(body) != PROBE_HEAD.size:
            raise ProbeError(f"probe echo of {len(body)} bytes")
        seq, sent_at = PROBE_HEAD.unpack(body)
        link = self.links[peer]
        if not any(s == seq and t == sent_at for s, t in link.sent) or seq in link.answered:
            return  # not a probe of ours in the window, or a duplicate echo
        link.answered.add(seq)
        sample = (now - sent_at) * 1000
        link.rtt_ms = sample if link.rtt_ms is None else link.rtt_ms + (sample - link.rtt_ms) / 8
        link.last_reply = now

    # -- evaluation ----------------------------------------------------------------------

    def loss(self, link: PeerLink, now: float) -> float:
        timeout = max(0.2, 3 * (link.rtt_ms or 0) / 1000)
        settled = [seq for seq, sent_at in link.sent if now - self.loss_window <= sent_at <= now - timeout]
        if not settled:
            return 0.0
        return sum(seq not in link.answered for seq in settled) / len(settled)

    def evaluate(self, now: float) -> list[tuple[int, LinkStatus, LinkStatus]]:
        """Update every link's status; returns [(peer, old, new)] for the ones that changed."""
        changes = []
        for peer, link in self.links.items():
            keep = {seq for seq, _ in link.sent}
            link.answered &= keep
            # Down = the last `down_after` probes we sent, each old enough to have been answered,
            # all unanswered. Counting our own probes (not wall time since the last echo) keeps a
            # relay whose event loop stalled (so it sent nothing) from declaring its links dead.
            answer_within = max(0.05, 2 * (link.rtt_ms or 0) / 1000)
            settled = [seq for seq, sent_at in link.sent if sent_at <= now - answer_within][-self.down_after:]
            missed = len(settled) == self.down_after and not any(seq in link.answered for seq in settled)
            if link.last_reply is None or missed:
                status = LinkStatus.DOWN
            elif self.loss(link, now) >= self.degraded_loss:
                status = LinkStatus.DEGRADED
            else:
                status = LinkStatus.UP
            if status != link.status:
                if link.status == LinkStatus.DOWN:
                    link.up_since = now
                elif status == LinkStatus.DOWN:
                    link.up_since = None
                changes.append((peer, link.status, status))
                link.status = status
        return changes

    def metrics(self, peer: int, now: float) -> LinkMetrics:
        link = self.links[peer]
        return LinkMetrics(link.status, link.rtt_ms or 0.0, self.loss(link, now), link.up_since)

    def table(self, now: float) -> dict[int, LinkMetrics]:
        return {peer: self.metrics(peer, now) for peer in self.links}

    def remote_tables(self, now: float) -> dict[int, dict[int, LinkMetrics]]:
        """Each peer's gossiped table, with stale ones (and links through dead peers) as down."""
        tables: dict[int, dict[int, LinkMetrics]] = {}
        for peer, (received, table) in self.gossip.items():
            fresh = now - received <= self.gossip_stale
            tables[peer] = table if fresh else dict.fromkeys(table, DOWN)
        return tables
