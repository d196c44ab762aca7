"""Downstream bandwidth estimate per subscriber and the layer cap it implies. Pure.

Inputs are what a subscriber's receiver tells us in RTCP: REMB (its own delay-based estimate,
when it sends one) and receiver reports (fraction lost, and the round trip from LSR/DLSR).
Decisions, in order:

* Congestion: loss above `LOSS_CONGESTED` in a report, or a REMB that just fell sharply to well
  below what we are sending (the receiver's estimator detected overuse: libwebrtc then drops its
  estimate to 0.85x of what arrives), moves the cap down one layer at once (at most once per
  `DOWN_HOLD` seconds, so a burst of reports about the same congestion counts once).
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

from dataclasses import dataclass

__all__ = ["BandwidthEstimator", "rtt_from_report"]

LOSS_CONGESTED = 0.10  # fraction lost in one receiver report that means "too much"
LOSS_CLEAR = 0.02  # at or below this a report counts as clear
DOWN_HOLD = 1.0  # seconds between two steps down
UP_HOLD = 3.0  # seconds of clear reports before a step up
UP_HOLD_MAX = 6.0  # after failed probes; a step up that holds brings the next hold back to UP_HOLD
REMB_OVERUSE = 0.7  # a REMB below this share of what we send means the receiver is overusing
REMB_FALL = 0.85  # ... when it also fell below this share of the previous REMB (a fresh detection)


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

    def on_report(self, fraction_lost: float, rtt_ms: float | None, now: float) -> int | None:
        """A receiver report block about our stream. Returns the new cap if it changed."""
        self.loss = fraction_lost
        if rtt_ms is not None:
            self.rtt_ms = rtt_ms
        if fraction_lost > LOSS_CONGESTED:
            return self._down(now)
        if fraction_lost > LOSS_CLEAR:
            self._clear_since = None  # not congested enough to drop, not clear enough to climb
            return None
        return self._maybe_up(now)

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
