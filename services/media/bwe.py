"""Downstream bandwidth estimate per subscriber and the layer cap it implies. Pure.

Inputs are what a subscriber's receiver tells us in RTCP: REMB (its own delay-based estimate,
when it sends one) and receiver reports (fraction lost, and the round trip from LSR/DLSR).
Decisions, in order:

* Congestion: loss above `LOSS_CONGESTED` in a report, or above `NACK_CONGESTED` in the NACKs of
  the last `NACK_WINDOW` (a receiver report comes once a second or so, a NACK as soon as the
  receiver sees a gap, so an overloaded link is noticed before the picture freezes), or a REMB that just fell
  sharply to well below what we are sending (the receiver's estimator detected overuse: libwebrtc
  then drops its estimate to 0.85x of what arrives), moves the cap down one layer at once (at
  most once per `DOWN_HOLD` seconds, so a burst of reports about the same congestion counts once).
* Recovery: the cap goes back up one layer after `UP_HOLD` seconds of reports with little loss.
  A REMB is no gate here: after congestion a receiver's estimate climbs back far more slowly
  than the link clears, and only sending more shows there is room. Nor is the round trip (the
  sender reports the subscriber answers carry the publisher's timing, so LSR/DLSR over-estimate
  it by up to a report interval). A step up
  that is followed by congestion within `UP_HOLD` doubles the hold for the next try (up to
  `UP_HOLD_MAX`), so a link that really is too small is not probed every few seconds.

REMB is never compared with a layer's nominal bitrate: a publisher's `maxBitrate` per layer is a
ceiling, and an easy picture is encoded far below it (a receiver's REMB stays near 1.5x what it
actually receives).

The cap is a ceiling on the subscriber's requested layer; the forwarder still switches only on
keyframes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["BandwidthEstimator", "rtt_from_report"]

LOSS_CONGESTED = 0.10  # fraction lost in one receiver report that means "too much"
LOSS_CLEAR = 0.02  # at or below this a report counts as clear
DOWN_HOLD = 1.0  # seconds between two steps down
UP_HOLD = 5.0  # seconds of clear reports before a step up (each probe of a too-small link costs a freeze)
UP_HOLD_MAX = 8.0  # after failed probes; a step up that holds brings the next hold back to UP_HOLD
REMB_OVERUSE = 0.7  # a REMB below this share of what we send means the receiver is overusing
REMB_FALL = 0.85  # ... when it also fell below this share of the previous REMB (a fresh detection)
NACK_WINDOW = 0.5  # seconds over which NACKs are gathered into one loss estimate
NACK_MIN_SPAN = 60  # packets sent since the oldest NACKed one before the estimate means anything
NACK_CONGESTED = 0.2  # NACKed share that means "too much": one lost burst of a few packets is not
NACK_FLOOR_TIME = 3.0  # seconds a receiver may go on asking for packets lost before a step down
NACK_MAX_BEHIND = 4096  # a NACK for a packet further back than this is stale or garbage


@dataclass(slots=True)
class BandwidthEstimator:
    """One subscriber leg of one simulcast track."""

    top_layer: int
    cap: int = -1  # highest layer allowed; -1 until the first decision (= top_layer)
    remb_bps: int = 0  # last REMB, 0 if none
    loss: float = 0.0  # last reported fraction lost
    rtt_ms: float = 0.0  # last measured round trip
    up_hold: float = UP_HOLD
    _last_down: float = float("-inf")
    _last_up: float = float("-inf")
    _clear_since: float | None = None
    _nack_window_start: float = float("-inf")
    _nack_oldest: int = -1  # the NACKed packet sent longest ago in the window, -1 if none
    _nacked: set[int] = field(default_factory=set)
    _nack_floor: int = -1  # the last packet sent before the last step down, -1 if none
    _nack_floor_until: float = float("-inf")
    _report_highest: int | None = None  # highest sequence number of the last receiver report

    def __post_init__(self) -> None:
        if self.cap < 0:
            self.cap = self.top_layer

    def on_remb(self, bitrate_bps: int, sending_bps: float, now: float) -> int | None:
        """A REMB from the subscriber, while we send it `sending_bps` on this track. Returns the
        new cap if it changed."""
        previous, self.remb_bps = self.remb_bps, bitrate_bps
        if sending_bps > 0 and bitrate_bps < REMB_OVERUSE * sending_bps and bitrate_bps < REMB_FALL * previous:
            return self._down(now)
        return None

    def on_report(self, fraction_lost: float, rtt_ms: float | None, now: float,
                  highest_seq: int | None = None) -> int | None:
        """A receiver report block about our stream (`highest_seq`: the highest sequence number
        it counts). Returns the new cap if it changed."""
        self.loss = fraction_lost
        if rtt_ms is not None:
            self.rtt_ms = rtt_ms
        previous, self._report_highest = self._report_highest, highest_seq
        if fraction_lost > LOSS_CONGESTED:
            if self._reports_before_step(previous, now):
                return None  # its losses are the overload the last step down already answered
            return self._down(now)
        if fraction_lost > LOSS_CLEAR:
            self._clear_since = None  # not congested enough to drop, not clear enough to climb
            return None
        return self._maybe_up(now)

    def on_nacks(self, seqs: Iterable[int], last_sent_seq: int, now: float) -> int | None:
        """A NACK from the subscriber, after we sent it packets up to `last_sent_seq`. The packets
        NACKed in the window, against every packet sent since the oldest of them, estimate the
        loss; a deep queue on the path delays the first NACK by a few hundred ms, so the estimate
        reaches back to the packets it names. Returns the new cap if it changed."""
        if now - self._nack_window_start > NACK_WINDOW:
            self._nack_window_start = now
            self._nacked.clear()
            self._nack_oldest = -1
        oldest_behind = (last_sent_seq - self._nack_oldest) & 0xFFFF if self._nack_oldest >= 0 else -1
        if now > self._nack_floor_until:
            self._nack_floor = -1
        floor_behind = (last_sent_seq - self._nack_floor) & 0xFFFF if self._nack_floor >= 0 else NACK_MAX_BEHIND
        for seq in seqs:
            behind = (last_sent_seq - seq) & 0xFFFF
            if behind >= min(NACK_MAX_BEHIND, floor_behind):
                continue  # not sent lately (or at all), or sent before the last step down
            self._nacked.add(seq)
            if behind > oldest_behind:
                oldest_behind, self._nack_oldest = behind, seq
        span = oldest_behind + 1
        if span >= NACK_MIN_SPAN and len(self._nacked) > NACK_CONGESTED * span:
            self.loss = len(self._nacked) / span
            return self._down(now)
        return None

    def _reports_before_step(self, previous_highest: int | None, now: float) -> bool:
        """Whether a report's interval (from the previous report's highest sequence number on)
        began before the last step down took effect."""
        if previous_highest is None or self._nack_floor < 0 or now > self._nack_floor_until:
            return False
        return 0 < (self._nack_floor - previous_highest) & 0xFFFF < 0x8000

    def stepped_down(self, last_sent_seq: int, now: float) -> None:
        """The forwarder acted on a step down after sending `last_sent_seq`: what was lost before
        it is the congestion that step answered. The receiver keeps NACKing those packets for a
        while, and its next report counts them; either would take a second step for the same
        overload."""
        self._nack_floor, self._nack_floor_until = last_sent_seq, now + NACK_FLOOR_TIME
        self._nacked.clear()
        self._nack_oldest = -1

    def _down(self, now: float) -> int | None:
        self._clear_since = None
        if self.cap == 0 or now - self._last_down < DOWN_HOLD:
            return None
        if now - self._last_up < self.up_hold:
            self.up_hold = min(UP_HOLD_MAX, self.up_hold * 2)  # the last step up did not fit
        else:
            self.up_hold = UP_HOLD
        self._last_down = now
        self.cap -= 1
        return self.cap

    def _maybe_up(self, now: float) -> int | None:
        if self.cap >= self.top_layer:
            self._clear_since = None
            return None
        if self._clear_since is None:
            self._clear_since = now
            return None
        if self._last_up > self._last_down:
            self.up_hold = UP_HOLD  # the previous step up held: the link has room again
        if now - self._clear_since < self.up_hold:
            return None
        self._clear_since = now  # the next step needs its own clear period
        self._last_up = now
        self.cap += 1
        return self.cap


def rtt_from_report(now_ntp_middle: int, lsr: int, dlsr: int) -> float | None:
    """Round trip in ms from a report block's LSR/DLSR (RFC 3550 §6.4.1), None if the receiver
    has not seen a sender report yet or the clocks give a nonsensical value."""
    if not lsr:
        return None
    rtt = (now_ntp_middle - lsr - dlsr) & 0xFFFFFFFF
    if rtt >= 0x80000000:
        return None
    return rtt * 1000.0 / 65536.0
