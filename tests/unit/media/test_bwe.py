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
    assert est.up_hold == min(bwe.UP_HOLD_MAX, 2 * bwe.UP_HOLD)
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
    for t in range(1, 2 * int(bwe.UP_HOLD) + 3):
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


class NackedLink:
    """Sends `per_tick` packets every 20 ms; the receiver NACKs every `lose_every`-th one."""

    def __init__(self, est: BandwidthEstimator, lose_every: int, per_tick: int = 3, first_seq: int = 65520) -> None:
        self.est, self.lose_every, self.per_tick = est, lose_every, per_tick
        self.seq, self.sent, self.now = first_seq - 1, 0, 0.0

    def tick(self) -> int | None:
        lost = []
        for _ in range(self.per_tick):
            self.seq = (self.seq + 1) & 0xFFFF
            self.sent += 1
            if self.sent % self.lose_every == 0:
                lost.append(self.seq)
        self.now += 0.02
        return self.est.on_nacks(lost, self.seq, self.now) if lost else None


def test_a_heavy_nacked_share_drops_a_layer_well_before_a_receiver_report() -> None:
    est = BandwidthEstimator(top_layer=2)
    link = NackedLink(est, lose_every=3)  # a third lost, across the sequence number wrap
    cap = None
    while cap is None and link.now < 1.0:
        cap = link.tick()
    assert cap == 1 and link.now < 0.45  # once NACK_MIN_SPAN packets were sent
    assert est.loss > bwe.NACK_CONGESTED


def test_nacks_delayed_by_a_deep_queue_count_back_to_the_packets_they_name() -> None:
    est = BandwidthEstimator(top_layer=2)
    # the first NACK arrives when 80 more packets were sent: half of those it names were lost
    assert est.on_nacks(range(100, 180, 2), 260, 0.0) == 1


def test_a_light_nacked_share_changes_nothing() -> None:
    est = BandwidthEstimator(top_layer=2)
    link = NackedLink(est, lose_every=8)  # 12.5 %: a report may call it congested, NACKs alone do not
    assert all(link.tick() is None for _ in range(200))
    assert est.cap == 2


def test_one_lost_burst_asked_for_again_and_again_changes_nothing() -> None:
    est = BandwidthEstimator(top_layer=2)
    burst = list(range(1000, 1008))
    for step in range(40):
        assert est.on_nacks(burst, 1008 + 5 * step, 0.05 * step) is None
    assert est.cap == 2


def test_nacks_for_packets_never_sent_lately_are_ignored() -> None:
    est = BandwidthEstimator(top_layer=2)
    assert est.on_nacks(range(20000, 20200), 10, 0.0) is None  # "behind" by more than NACK_MAX_BEHIND
    assert est.on_nacks(range(11, 200), 10, 0.1) is None  # not sent yet
    assert est.cap == 2 and not est._nacked


def test_losses_from_before_a_step_down_do_not_take_a_second_step() -> None:
    est = BandwidthEstimator(top_layer=2)
    assert est.on_nacks(range(100, 180, 2), 260, 0.0) == 1
    est.stepped_down(260, 0.0)
    # the old layer's packets are NACKed again, well after DOWN_HOLD
    for step in range(1, 30):
        assert est.on_nacks(range(100, 260, 2), 260 + 5 * step, 0.9 + 0.05 * step) is None
    assert est.cap == 1
    # but fresh losses after the step do count
    assert est.on_nacks(range(400, 480, 2), 480, 3.0) == 0


def test_the_floor_of_a_step_down_expires() -> None:
    est = BandwidthEstimator(top_layer=2)
    est.stepped_down(65000, 0.0)
    # 64,000 packets later the floor would look recent again if it were kept
    assert est.on_nacks(range(64000, 64160, 2), 64160, bwe.NACK_FLOOR_TIME + 1) == 1


def test_the_report_spanning_a_step_down_does_not_take_a_second_step() -> None:
    est = BandwidthEstimator(top_layer=2)
    assert est.on_report(0.0, None, 0.0, highest_seq=1000) is None
    assert est.on_remb(400_000, 1_500_000, 0.5) is None  # first REMB: no previous one to fall from
    assert est.on_report(0.5, None, 0.6, highest_seq=1050) == 1
    est.stepped_down(1060, 0.6)
    # received up to 1200 since 1050: the lost packets before 1060 are the overload just answered
    assert est.on_report(0.3, None, 1.7, highest_seq=1200) is None
    # the next report is about the lower layer only: still losing, so down again
    assert est.on_report(0.3, None, 2.8, highest_seq=1350) == 0
