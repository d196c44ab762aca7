"""What the HTTP edge needs from the service that serves it.

`http.build_app` is handed the running `SignalService`; typing it against this Protocol instead
of the class keeps `http` from importing `app` (which imports `http` to build the routes).
"""

from __future__ import annotations

from typing import Protocol

from shared.auth import TokenVerifier
from shared.bus import Bus
from shared.config import Settings
from shared.metrics import ServiceMetrics

from .rtc import RtcEndpoint


class HttpHost(Protocol):
    node_id: str
    settings: Settings
    bus: Bus | None  # None until the service has connected
    verifier: TokenVerifier
    metrics: ServiceMetrics
    rtc: RtcEndpoint

    def region_list(self) -> list[dict[str, str]]: ...
