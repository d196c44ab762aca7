"""Build aiortc's per-receiver bandwidth estimator on first use instead of at construction.

``RTCRtpReceiver.__init__`` creates a ``RemoteBitrateEstimator`` for every video m-line, whose
``RateCounter`` allocates 1000 bucket objects (~1 ms of CPU). A media node creates receivers for
every m-line of every publisher offer and every subscriber transceiver, and never feeds them
(media bypasses aiortc's receive path, see peer.py), so in a join storm that allocation was a
fifth of the node's time. :class:`LazyRemoteBitrateEstimator` behaves exactly like the real one
once touched; ``aiortc_compat.install()`` makes aiortc use it (process-wide, idempotent).
"""

from __future__ import annotations

from typing import Any

from aiortc.rate import RemoteBitrateEstimator

__all__ = ["LazyRemoteBitrateEstimator"]


class LazyRemoteBitrateEstimator:
    __slots__ = ("_real",)

    def __init__(self) -> None:
        self._real: RemoteBitrateEstimator | None = None

    def __getattr__(self, name: str) -> Any:  # only for names the proxy itself lacks
        real = self._real
        if real is None:
            real = self._real = RemoteBitrateEstimator()
        return getattr(real, name)

    @property
    def built(self) -> bool:
        return self._real is not None
