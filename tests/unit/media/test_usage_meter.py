from __future__ import annotations

from services.media.usage import Counters, UsageMeter
from shared.events import Direction


def meter() -> UsageMeter:
    return UsageMeter("devkey", "room", "RM_1", "PA_1", "alice", started_ms=1_000)


def test_deltas_sum_to_the_totals_and_never_repeat() -> None:
    m = meter()
    first = m.samples(6_000, {("", Direction.UPSTREAM): Counters(1000, 10), ("", Direction.DOWNSTREAM): Counters(50, 1),
                              ("TR_a", Direction.UPSTREAM): Counters(900, 9)})
    second = m.samples(11_000, {("", Direction.UPSTREAM): Counters(2500, 25),
                                ("", Direction.DOWNSTREAM): Counters(50, 1),
                                ("TR_a", Direction.UPSTREAM): Counters(900, 9)})
    up = [s for s in first + second if s.track_sid == "" and s.direction == Direction.UPSTREAM]
    assert [s.bytes for s in up] == [1000, 1500]
    assert sum(s.packets for s in up) == 25
    # an unchanged per-track counter sends nothing; participant totals always report (connection time)
    assert [s.track_sid for s in second] == ["", ""]
    assert [(s.start_ms, s.end_ms) for s in up] == [(1_000, 6_000), (6_000, 11_000)]


def test_connection_time_is_carried_once_per_interval() -> None:
    m = meter()
    samples = m.samples(61_000, {("", Direction.UPSTREAM): Counters(), ("", Direction.DOWNSTREAM): Counters()})
    assert sum(s.connection_ms for s in samples) == 60_000
    assert {s.project for s in samples} == {"devkey"}
