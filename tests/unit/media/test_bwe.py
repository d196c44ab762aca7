"""Bandwidth estimator decisions: down on loss or overuse, back up after clear reports, with hysteresis."""

from __future__ import annotations

from services.media import bwe
from services.media.bwe import BandwidthEstimator, rtt_from_report


def test_heavy_loss_moves_down_one_layer_at_a_time() -> None:
    est = BandwidthEstimator(top_layer=2)
    assert est.on_report(0.3, 40.0, 0.0) == 1
    assert est.on_report(0.3, 40.0, 0.5) is None  # same congestion episode: held
    assert est.on_report(0.3, 40.0, 0.5 + bwe.DOWN_HOLD) == 0
    assert est.on_report(0.5, 40.0, 10.0) is None  # nothing below the lowest layer
    assert est.cap == 0 and est.rtt_ms == 40.0


def test_light_loss_neither_drops_nor_climbs() -> None:
    est = BandwidthEstimator(top_layer=2, cap=1)
    for t in range(30):
        assert est.on_report(0.05, None, float(t)) is None
    assert est.cap == 1


def test_clear_reports_climb_back_one_step_per_hold() -> None:
    est = BandwidthEstimator(top_layer=2, cap=0)
    assert est.on_report(0.0, None, 0.0) is None
    assert est.on_report(0.0, None, bwe.UP_HOLD - 0.1) is None
    assert est.on_report(0.0, None, bwe.UP_HOLD) == 1
    assert est.on_report(0.0, None, bwe.UP_HOLD + 1) is None
    assert est.on_report(0.0, None, 2 * bwe.UP_HOLD) == 2
    assert est.on_report(0.0, None, 100.0) is None


def test_a_step_up_that_does_not_fit_lengthens_the_next_wait() -> None:
    est = BandwidthEstimator(top_layer=2, cap=0)
    est.on_report(0.0, None, 0.0)
    assert est.on_report(0.0, None, bwe.UP_HOLD) == 1
    assert est.on_report(0.4, None, bwe.UP_HOLD + 0.5) == 0  # the upper layer caused loss
    assert est.up_hold == 2 * bwe.UP_HOLD
    start = bwe.UP_HOLD + 1
    est.on_report(0.0, None, start)
    assert est.on_report(0.0, None, start + bwe.UP_HOLD) is None
    assert est.on_report(0.0, None, start + est.up_hold) == 1
    assert est.up_hold <= bwe.UP_HOLD_MAX
    # that step held (no congestion after it): the next one waits the normal hold again
    step = start + est.up_hold
    assert est.on_report(0.0, None, step + bwe.UP_HOLD) == 2
    assert est.up_hold == bwe.UP_HOLD


def test_remb_well_below_the_sending_rate_is_congestion() -> None:
    est = BandwidthEstimator(top_layer=2)
    assert est.on_remb(1_500_000, 1_200_000, 0.0) is None
    assert est.on_remb(400_000, 1_200_000, 1.0) == 1  # fell sharply, far under what it gets
    assert est.remb_bps == 400_000
    assert est.on_remb(300_000, 0, 5.0) is None  # nothing sent: no opinion


def test_a_low_remb_that_climbs_back_does_not_hold_the_cap_down() -> None:
    # after congestion a receiver's estimate recovers slowly; it must not undo each step up
    est = BandwidthEstimator(top_layer=2, cap=0)
    est.on_remb(40_000, 100_000, 0.0)
    for t in range(1, 8):
        est.on_remb(40_000 + 1000 * t, 500_000, float(t))  # low, but rising: no fresh overuse
        est.on_report(0.0, None, float(t))
    assert est.cap == 2


def test_rtt_from_lsr_and_dlsr() -> None:
    # LSR at 1.0 s, receiver held it 0.25 s, back at 1.3 s: 50 ms round trip
    now, lsr, dlsr = int(1.3 * 65536), int(1.0 * 65536), int(0.25 * 65536)
    rtt = rtt_from_report(now, lsr, dlsr)
    assert rtt is not None and abs(rtt - 50.0) < 0.1
    assert rtt_from_report(now, 0, 0) is None
    assert rtt_from_report(lsr, now, 0) is None  # negative: clocks disagree
