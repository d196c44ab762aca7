"""Dynacast: which simulcast layers of a published video track anybody needs. Pure.

The publisher encodes every layer it announced unless told otherwise; LiveKit's
`subscribed_quality_update` tells it, per quality, whether some subscriber needs it, and the
client stops the encodings nobody needs (`RTCRtpEncodingParameters.active = false`).

A subscriber needs the layers up to the one it asked for (UpdateTrackSettings width/height or
quality; the top layer by default); a paused subscriber needs none. More is asked for at once
(a subscriber waits for its picture); less only after the lower need has held for
`downgrade_delay` seconds, so a window being resized or a subscriber rejoining does not stop and
restart an encoder (which costs a keyframe each time).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from livekit.protocol import models, rtc

__all__ = ["DOWNGRADE_DELAY", "NO_LAYER", "Dynacast", "quality_update"]

DOWNGRADE_DELAY = 3.0  # seconds a lower need must hold before layers are stopped
NO_LAYER = -1  # nobody needs any layer


@dataclass(slots=True)
class Dynacast:
    """Per published video track: the highest layer any subscriber needs, debounced."""

    layers: Sequence[int]  # the layers the publisher announced, e.g. [0, 1, 2]
    downgrade_delay: float = DOWNGRADE_DELAY
    max_layer: int | None = None  # what the publisher was last told; None: never told (sends all)
    _lower_since: float | None = None

    def update(self, needed: Iterable[int], now: float) -> int | None:
        """`needed`: the layer each subscriber needs (NO_LAYER when paused). Returns the new
        highest layer to keep sending when the publisher must be told, else None."""
        top = max(self.layers, default=0)
        wanted = min(max(needed, default=NO_LAYER), top)
        current = top if self.max_layer is None else self.max_layer
        if wanted >= current:
            self._lower_since = None
            if self.max_layer is not None and wanted > current:
                self.max_layer = wanted
                return wanted
            return None
        if self._lower_since is None:
            self._lower_since = now
            return None
        if now - self._lower_since < self.downgrade_delay:
            return None
        self._lower_since = None
        self.max_layer = wanted
        return wanted


def quality_update(track_sid: str, mime_type: str, layers: Sequence[int], max_layer: int) -> rtc.SignalResponse:
    """The `subscribed_quality_update` that keeps the layers up to `max_layer` (LiveKit's
    per-codec list, plus the deprecated flat list older clients read)."""
    qualities = [rtc.SubscribedQuality(quality=layer, enabled=layer <= max_layer)
                 for layer in (models.VideoQuality.LOW, models.VideoQuality.MEDIUM, models.VideoQuality.HIGH)
                 if layer in layers or not layers]
    codec = mime_type.split("/")[-1].lower() if mime_type else "vp8"
    return rtc.SignalResponse(subscribed_quality_update=rtc.SubscribedQualityUpdate(
        track_sid=track_sid, subscribed_qualities=qualities,
        subscribed_codecs=[rtc.SubscribedCodec(codec=codec, qualities=qualities)]))
