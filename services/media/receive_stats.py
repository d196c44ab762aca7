"""Receiver statistics of one incoming RTP stream (RFC 3550 §6.4.1, appendix A.3 and A.8),
kept cheaply per packet and turned into report blocks for the Receiver Reports the SFU sends
its publishers (they drive the publisher's loss-based bandwidth estimate)."""

from __future__ import annotations

import time

from .rtp.rtcp import ReportBlock, ntp_from_seconds, ntp_middle


class ReceiveStats:
    __slots__ = (
        "_base_seq",
        "_cycles",
        "_expected_prior",
        "_last_sr_arrival",
        "_last_sr_ntp",
        "_last_timestamp",
        "_max_seq",
        "_quality_mark",
        "_received_prior",
        "_transit",
        "clock_rate",
        "frames",
        "jitter",
        "received",
        "ssrc",
    )

    def __init__(self, ssrc: int, clock_rate: int, first_seq: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self._base_seq = first_seq
        self._max_seq = first_seq
        self._cycles = 0
        self.received = 0
        self.frames = 0  # distinct RTP timestamps seen (a video frame is one timestamp)
        self._last_timestamp = -1
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: int | None = None  # transit can be negative: no sign can mean 'unset'
        self.jitter = 0.0
        self._last_sr_ntp = 0
        self._last_sr_arrival = 0.0
        self._quality_mark = (0, 0)

    def update(self, seq: int, rtp_timestamp: int, arrival: float) -> None:
        self.received += 1
        if rtp_timestamp != self._last_timestamp:
            self.frames += 1
            self._last_timestamp = rtp_timestamp
        delta = (seq - self._max_seq) & 0xFFFF
        if 0 < delta < 0x8000:
            if seq < self._max_seq:
                self._cycles += 0x10000
            self._max_seq = seq
        transit = int(arrival * self.clock_rate) - rtp_timestamp
        if self._transit is not None:
            d = abs(transit - self._transit) & 0xFFFFFFFF
            if d < 0x80000000:
                self.jitter += (d - self.jitter) / 16.0
        self._transit = transit

    def sender_report(self, ntp: int) -> None:
        self._last_sr_ntp = ntp_middle(ntp)
        self._last_sr_arrival = time.monotonic()

    @property
    def extended_max(self) -> int:
        return self._cycles + self._max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self._base_seq + 1

    def loss_since_last_call(self) -> float:
        """Loss fraction over the interval since the previous call (for connection quality,
        independent of the RR intervals)."""
        expected_now = self.extended_max - self._base_seq + 1
        expected_then, received_then = self._quality_mark
        self._quality_mark = (expected_now, self.received)
        expected = expected_now - expected_then
        if expected <= 0:
            return 0.0
        return max(0.0, min(1.0, (expected - (self.received - received_then)) / expected))

    def report_block(self) -> ReportBlock:
        expected = self.extended_max - self._base_seq + 1
        lost = max(0, expected - self.received)
        expected_interval = expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior, self._received_prior = expected, self.received
        lost_interval = expected_interval - received_interval
        fraction = 0 if expected_interval <= 0 or lost_interval <= 0 else (lost_interval << 8) // expected_interval
        dlsr = int((time.monotonic() - self._last_sr_arrival) * 65536) if self._last_sr_ntp else 0
        return ReportBlock(ssrc=self.ssrc, fraction_lost=min(255, fraction), cumulative_lost=min(lost, 0x7FFFFF),
                           highest_seq=self.extended_max & 0xFFFFFFFF, jitter=int(self.jitter),
                           lsr=self._last_sr_ntp, dlsr=dlsr)


__all__ = ["ReceiveStats", "ntp_from_seconds"]
