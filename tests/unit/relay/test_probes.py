from __future__ import annotations

import pytest

from services.relay.probes import LinkMonitor, ProbeError, decode_table, encode_table
from services.relay.routing import LinkMetrics
from shared.events import LinkStatus


def exchange(a: LinkMonitor, b: LinkMonitor, now: float, rtt: float, deliver: bool = True) -> None:
    """a probes b; b's echo arrives `rtt` later (or never)."""
    probe = a.make_probe(b.self_index, now)
    if deliver:
        echo = b.on_probe(a.self_index, probe[:], now + rtt / 2)
        a.on_reply(b.self_index, echo, now + rtt)


def healthy_second(a: LinkMonitor, b: LinkMonitor) -> float:
    """One second of answered probes a -> b (10 ms RTT); returns the time after it."""
    t = 0.0
    for _ in range(10):
        exchange(a, b, t, 0.010)
        t += 0.1
    return t


def test_rtt_up_and_gossip() -> None:
    a, b = LinkMonitor(0, [1]), LinkMonitor(1, [0])
    for i in range(10):
        exchange(a, b, i * 0.1, 0.030)
        exchange(b, a, i * 0.1, 0.030)
    assert a.evaluate(1.0) == [(1, LinkStatus.DOWN, LinkStatus.UP)]
    b.evaluate(1.0)
    assert a.metrics(1, 1.0).rtt_ms == pytest.approx(30, abs=0.5)
    assert a.metrics(1, 1.0).loss == 0
    exchange(b, a, 1.0, 0.030)  # b's next probe carries its table: a learns about b -> a
    gossip = a.remote_tables(1.02)[1][0]
    assert gossip.status == LinkStatus.UP and gossip.rtt_ms == pytest.approx(30, abs=0.5)
    assert a.remote_tables(3.0)[1][0].status == LinkStatus.DOWN  # stale gossip counts as down


def test_down_after_three_missed_probes() -> None:
    a, b = LinkMonitor(0, [1]), LinkMonitor(1, [0])
    t = healthy_second(a, b)
    assert a.evaluate(t)[0][2] == LinkStatus.UP
    cut_at = t
    while a.links[1].status != LinkStatus.DOWN:
        exchange(a, b, t, 0.010, deliver=False)
        t += 0.1
        a.evaluate(t)
    detected = t - cut_at
    assert 0.3 <= detected <= 0.5, detected  # ~3 probes, far below a second
    assert a.links[1].up_since is None
    exchange(a, b, t, 0.010)
    t += 0.1
    # usable again at the first echo, degraded while the lost probes are in the loss window
    assert a.evaluate(t) == [(1, LinkStatus.DOWN, LinkStatus.DEGRADED)]
    assert a.links[1].up_since == t
    for _ in range(25):
        exchange(a, b, t, 0.010)
        t += 0.1
    assert a.evaluate(t) == [(1, LinkStatus.DEGRADED, LinkStatus.UP)]


def test_loss_over_the_window_and_degraded() -> None:
    a, b = LinkMonitor(0, [1]), LinkMonitor(1, [0])
    t = 0.0
    for i in range(40):
        exchange(a, b, t, 0.010, deliver=i % 3 != 0)  # every third probe lost
        t += 0.1
    assert a.evaluate(t)[-1][2] == LinkStatus.DEGRADED
    assert a.metrics(1, t).loss == pytest.approx(1 / 3, abs=0.08)


def test_foreign_or_duplicate_echo_is_ignored() -> None:
    a, b = LinkMonitor(0, [1]), LinkMonitor(1, [0])
    probe = a.make_probe(1, 0.0)
    echo = b.on_probe(0, probe, 0.01)
    a.on_reply(1, echo, 0.02)
    a.on_reply(1, echo, 0.5)  # duplicate: must not pull the RTT up
    assert a.links[1].rtt_ms == pytest.approx(20)
    with pytest.raises(ProbeError):
        a.on_reply(1, b"short", 0.1)
    with pytest.raises(ProbeError):
        b.on_probe(0, probe + b"\x01", 0.1)  # table not a whole number of entries


def test_table_encoding_round_trip() -> None:
    table = {1: LinkMetrics(LinkStatus.UP, 12.3, 0.05, 7.0), 2: LinkMetrics(LinkStatus.DOWN)}
    decoded = decode_table(encode_table(table, now=10.0), now=10.0)
    assert decoded[1].rtt_ms == pytest.approx(12.3) and decoded[1].loss == pytest.approx(0.05)
    assert decoded[1].up_since == pytest.approx(7.0)
    assert decoded[2].status == LinkStatus.DOWN and decoded[2].up_since is None


def test_a_relay_that_stalled_does_not_declare_its_links_dead() -> None:
    """Our event loop stalled for a second (no probes sent): no evidence against the link."""
    a, b = LinkMonitor(0, [1]), LinkMonitor(1, [0])
    t = healthy_second(a, b)
    a.evaluate(t)
    t += 1.0  # stalled: the first tick after it sends a probe and evaluates before any echo
    a.make_probe(1, t)
    assert a.evaluate(t) == []
    assert a.links[1].status == LinkStatus.UP
