"""ReceiveStats: RFC 3550 receiver statistics of one incoming RTP stream."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.media import receive_stats as rs_module
from services.media.receive_stats import ReceiveStats
from services.media.rtp.rtcp import ntp_from_seconds, ntp_middle

RATE = 48_000
STEP_S = 1 / 32  # exact in binary, so arrival * RATE has no rounding surprises
STEP_TS = 1_500  # STEP_S * RATE
BASE_ARRIVAL = 10.0


def feed(stats: ReceiveStats, seqs: list[int], *, ts_base: int = 0, first_index: int = 0,
         delays: dict[int, float] | None = None) -> None:
    """Packet i has seq seqs[i], timestamp ts_base + i*STEP_TS and arrives at i*STEP_S (+ delay)."""
    delays = delays or {}
    for offset, seq in enumerate(seqs):
        i = first_index + offset
        stats.update(seq, (ts_base + i * STEP_TS) & 0xFFFFFFFF, BASE_ARRIVAL + i * STEP_S + delays.get(i, 0.0))


def fresh(first_seq: int = 0) -> ReceiveStats:
    return ReceiveStats(ssrc=0x1234, clock_rate=RATE, first_seq=first_seq)


def test_first_packet_only() -> None:
    s = fresh(100)
    feed(s, [100])
    block = s.report_block()
    assert (block.ssrc, block.highest_seq, block.cumulative_lost, block.fraction_lost) == (0x1234, 100, 0, 0)
    assert (block.jitter, block.lsr, block.dlsr) == (0, 0, 0)


def test_in_order_no_loss() -> None:
    s = fresh(0)
    feed(s, list(range(50)))
    assert s.extended_max == 49
    assert s.received == 50
    block = s.report_block()
    assert (block.highest_seq, block.cumulative_lost, block.fraction_lost, block.jitter) == (49, 0, 0, 0)


def test_extended_highest_seq_across_wraparound() -> None:
    s = fresh(65533)
    feed(s, [65533, 65534, 65535, 0, 1, 2])
    assert s.extended_max == 65536 + 2
    block = s.report_block()
    assert block.highest_seq == 65538
    assert block.cumulative_lost == 0


def test_two_wraparounds() -> None:
    s = fresh(65000)
    seqs = [(65000 + i * 500) & 0xFFFF for i in range(270)]  # crosses zero twice
    feed(s, seqs)
    assert s.extended_max == 65000 + 269 * 500
    assert s.extended_max >= 2 * 65536


def test_loss_across_wraparound() -> None:
    s = fresh(65534)
    feed(s, [65534, 1])  # 65535 and 0 lost
    block = s.report_block()
    assert (block.highest_seq, block.cumulative_lost) == (65537, 2)
    assert block.fraction_lost == (2 << 8) // 4


def test_reordered_old_packet_does_not_move_highest() -> None:
    s = fresh(0)
    feed(s, [0, 1, 3, 2, 4])
    assert s.extended_max == 4
    assert s.report_block().cumulative_lost == 0


def test_late_packet_before_wrap_does_not_add_a_cycle() -> None:
    s = fresh(65534)
    feed(s, [65534, 0, 65535, 1])
    assert s.extended_max == 65537
    assert s.report_block().cumulative_lost == 0


def test_huge_forward_jump_treated_as_old() -> None:
    s = fresh(10)
    feed(s, [10, 11, (11 + 0x8000) & 0xFFFF])
    assert s.extended_max == 11


def test_cumulative_loss_and_fraction_per_interval() -> None:
    s = fresh(0)
    feed(s, [0, 1, 2, 5, 6, 7, 8, 9])  # 3, 4 lost
    first = s.report_block()
    assert (first.cumulative_lost, first.fraction_lost, first.highest_seq) == (2, (2 << 8) // 10, 9)
    assert first.fraction_lost == 51

    feed(s, list(range(10, 20)), first_index=10)
    second = s.report_block()
    assert (second.cumulative_lost, second.fraction_lost) == (2, 0)

    feed(s, [23], first_index=23)  # 20, 21, 22 lost
    third = s.report_block()
    assert (third.cumulative_lost, third.fraction_lost, third.highest_seq) == (5, 192, 23)


def test_no_new_packets_gives_zero_fraction() -> None:
    s = fresh(0)
    feed(s, [0, 2])
    assert s.report_block().fraction_lost == (1 << 8) // 3 == 85
    assert s.report_block().fraction_lost == 0


def test_duplicates_never_give_negative_loss() -> None:
    s = fresh(0)
    feed(s, [0, 1, 1, 2, 2, 2])
    block = s.report_block()
    assert (block.cumulative_lost, block.fraction_lost) == (0, 0)


def test_total_loss_fraction_is_capped() -> None:
    s = fresh(0)
    feed(s, [0])
    s.report_block()
    feed(s, [1000], first_index=1000)
    block = s.report_block()
    assert block.cumulative_lost == 999
    assert block.fraction_lost == (999 << 8) // 1000


def test_loss_since_last_call_is_independent_of_reports() -> None:
    s = fresh(0)
    feed(s, [0, 1, 2, 3, 5, 6, 7, 8, 9, 10])  # 4 lost out of 11
    assert s.loss_since_last_call() == pytest.approx(1 / 11)
    s.report_block()  # does not reset the quality window...
    feed(s, [11, 12, 13, 14, 19], first_index=11)  # 15..18 lost
    assert s.loss_since_last_call() == pytest.approx(4 / 9)
    assert s.loss_since_last_call() == 0.0  # ...and nothing arrived since
    feed(s, [20, 21], first_index=20)
    assert s.loss_since_last_call() == 0.0


def test_loss_since_last_call_clamped_with_duplicates() -> None:
    s = fresh(0)
    feed(s, [0, 1])
    s.loss_since_last_call()
    feed(s, [2, 2, 2], first_index=2)
    assert s.loss_since_last_call() == 0.0


def test_jitter_zero_with_regular_arrival() -> None:
    s = fresh(0)
    feed(s, list(range(100)), ts_base=1_000)
    assert s.jitter == 0.0


def test_jitter_grows_with_irregular_arrival_exact() -> None:
    s = fresh(0)
    delay = 1 / 64  # 750 timestamp units at 48 kHz
    feed(s, list(range(3)), ts_base=1_000, delays={1: delay})
    # D(0,1) = 750 -> J = 750/16; D(1,2) = 750 -> J += (750 - J)/16
    j1 = 750 / 16
    assert s.jitter == pytest.approx(j1 + (750 - j1) / 16)
    assert s.report_block().jitter == int(j1 + (750 - j1) / 16) == 90


def test_jitter_keeps_growing_then_decays() -> None:
    s = fresh(0)
    feed(s, list(range(40)), ts_base=1_000, delays={i: (i % 2) / 64 for i in range(40)})
    high = s.jitter
    assert 600 < high < 750
    feed(s, list(range(40, 200)), ts_base=1_000, first_index=40)
    assert s.jitter < high / 50


def test_jitter_with_large_rtp_timestamps() -> None:
    s = fresh(0)
    feed(s, list(range(3)), ts_base=3_000_000_000, delays={1: 1 / 64})
    j1 = 750 / 16
    assert s.jitter == pytest.approx(j1 + (750 - j1) / 16)


def test_lsr_and_dlsr_after_sender_report(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SimpleNamespace(monotonic=lambda: 50.0)
    monkeypatch.setattr(rs_module, "time", clock)
    s = fresh(0)
    feed(s, [0, 1])
    before = s.report_block()
    assert (before.lsr, before.dlsr) == (0, 0)

    ntp = ntp_from_seconds(1_700_000_000.25)
    s.sender_report(ntp)
    clock.monotonic = lambda: 50.5
    block = s.report_block()
    assert block.lsr == ntp_middle(ntp) == (ntp >> 16) & 0xFFFFFFFF
    assert block.dlsr == 32768  # 0.5 s in 1/65536 s units

    clock.monotonic = lambda: 52.0
    assert s.report_block().dlsr == 2 * 65536

    newer = ntp_from_seconds(1_700_000_003.0)
    s.sender_report(newer)
    assert s.report_block().lsr == ntp_middle(newer)
    assert s.report_block().dlsr == 0
