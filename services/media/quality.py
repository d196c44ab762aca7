"""Connection quality on LiveKit's scale from packet loss (MOS-like buckets). Pure."""

from __future__ import annotations

from livekit.protocol import models


def quality_from_loss(loss: float, publishing_self: bool = False) -> tuple[int, float]:
    """(ConnectionQuality, score 1..5) for an interval's loss fraction (0..1). A client never
    sees LOST for itself while it publishes: livekit-client would force a full reconnect."""
    if loss < 0.02:
        return models.ConnectionQuality.EXCELLENT, 4.5
    if loss < 0.08:
        return models.ConnectionQuality.GOOD, 3.5
    if loss < 0.5 or publishing_self:
        return models.ConnectionQuality.POOR, 2.0
    return models.ConnectionQuality.LOST, 1.0
