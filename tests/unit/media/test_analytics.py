"""Track analytics: frames credited to the legs that forward a layer, interval rates, RTCP folding."""

from __future__ import annotations

from dataclasses import dataclass

from services.media.analytics import LegStats, TrackAnalytics
from services.media.receive_stats import ReceiveStats
from services.media.rtp.rtcp import ReportBlock
from shared.events import LayerSwitchReason, TrackKind


@dataclass
class Leg:
    leg_key: str
    bytes_sent: int = 0
    packets_sent: int = 0
    forwarding_layer: int = -1


def feed(stream: ReceiveStats, frames: int, packets_per_frame: int, start_seq: int = 0, skip: set[int] | None = None,
         start_ts: int = 0) -> int:
    seq = start_seq
    for frame in range(frames):
        for _ in range(packets_per_frame):
            if not skip or seq not in skip:
                stream.update(seq & 0xFFFF, start_ts + frame * 3000, 0.0)
            seq += 1
    return seq


def test_frames_are_credited_to_the_leg_forwarding_that_layer() -> None:
    low, high = ReceiveStats(1, 90000, 0), ReceiveStats(2, 90000, 0)
    analytics = TrackAnalytics(TrackKind.VIDEO, 90000)
    on_low, on_high, paused = LegStats(), LegStats(), LegStats()
    streams = {0: low, 2: high}
    analytics.accumulate(0.0, streams, [(on_low, 0, 0), (on_high, 2, 0), (paused, -1, 0)])  # marks the start
    feed(low, 15, 1)
    feed(high, 15, 4)
    analytics.accumulate(0.5, streams, [(on_low, 0, 10_000), (on_high, 2, 100_000), (paused, -1, 0)])
    assert (on_low.frames, on_high.frames, paused.frames) == (15, 15, 0)
    # sending rates: smoothed towards 160 kbps / 1.6 Mbps
    assert on_low.sending_bps == 80_000 and on_high.sending_bps == 800_000 and paused.sending_bps == 0
    feed(high, 30, 4, start_seq=60, start_ts=15 * 3000)
    analytics.accumulate(1.0, streams, [(on_low, 0, 20_000), (on_high, 2, 200_000)])
    assert (on_low.frames, on_high.frames) == (15, 45)
    assert on_low.sending_bps == 120_000 and on_high.sending_bps == 1_200_000


def test_snapshot_rates_and_loss_over_the_interval() -> None:
    stream = ReceiveStats(7, 90000, 0)
    analytics = TrackAnalytics(TrackKind.VIDEO, 90000, _at=0.0)
    leg = Leg("PA_sub", bytes_sent=0)
    stats = LegStats()
    analytics.snapshot(0.0, 0, {}, [2], [(leg, stats)])
    feed(stream, 60, 2, skip={10, 12, 14, 16, 18, 20})  # 120 packets, 6 lost (one of 6 frames each)
    leg.bytes_sent, stats.frames = 250_000, 58
    sample = analytics.snapshot(2.0, 500_000, {2: stream}, [2], [(leg, stats)])
    assert sample.interval_ms == 2000
    assert sample.bitrate_bps == 2_000_000
    assert abs(sample.packet_loss - 6 / 120) < 1e-3
    assert sample.fps == 30.0 and sample.frames_total == 60
    assert sample.layers[0].layer == 2 and sample.layers[0].packets_per_s == 57.0 and sample.jitter_ms > 0
    assert sample.legs["PA_sub"] == (1_000_000, 29.0)
    again = analytics.snapshot(4.0, 500_000, {2: stream}, [], [(leg, stats)])
    assert again.bitrate_bps == 0 and again.packet_loss == 0 and again.legs["PA_sub"] == (0, 0)
    assert not again.layers[0].active


def test_receiver_reports_and_switches_fold_into_leg_stats() -> None:
    stats = LegStats()
    stats.on_report(ReportBlock(ssrc=5, fraction_lost=64, cumulative_lost=3, highest_seq=100, jitter=900, lsr=0,
                                dlsr=0), 90000, None)
    assert stats.loss == 0.25 and stats.jitter_ms == 10.0 and stats.rtt_ms == 0.0
    stats.on_report(ReportBlock(5, 0, 3, 200, 90, 1, 1), 90000, 42.0)
    assert stats.loss == 0 and stats.rtt_ms == 42.0
    stats.switched(2, 2, LayerSwitchReason.PUBLISHER)  # no change: not a switch
    stats.switched(2, 1, LayerSwitchReason.CONGESTION)
    stats.switched(1, 2, LayerSwitchReason.RECOVERED)
    taken = stats.take_switches()
    assert [(s.from_layer, s.to_layer, s.reason) for s in taken] == [
        (2, 1, LayerSwitchReason.CONGESTION), (1, 2, LayerSwitchReason.RECOVERED)]
    assert stats.take_switches() == []
    for i in range(200):
        stats.switched(i % 3, (i + 1) % 3, LayerSwitchReason.REQUESTED)
    assert len(stats.take_switches()) == 50
