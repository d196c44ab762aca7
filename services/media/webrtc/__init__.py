"""aiortc adapter layer of the media service: ICE setup, SDP munging, and ``MediaPeer`` (one
RTCPeerConnection with a synchronous SRTP fast path for RTP-level forwarding).

aiortc/aioice internals are touched only in ``aiortc_compat``; call :func:`install` once before
the first peer (the media node does at start). Importing this package patches nothing."""

from .aiortc_compat import install
from .ice import (
    IceConfig,
    PortRangeExhaustedError,
    configure,
    configure_ice,
    current_ice_config,
    ice_config_from_settings,
    reset_ice,
    rtc_configuration,
)
from .outgoing_track import NullTrack, OutgoingTrack
from .peer import MediaPeer, MediaPeerClosedError, MediaPeerError, MediaPeerTimeoutError
from .sdp import MediaSection, ParsedSdp, munge_publisher_answer, parse_sdp

__all__ = [
    "IceConfig",
    "MediaPeer",
    "MediaPeerClosedError",
    "MediaPeerError",
    "MediaPeerTimeoutError",
    "MediaSection",
    "NullTrack",
    "OutgoingTrack",
    "ParsedSdp",
    "PortRangeExhaustedError",
    "configure",
    "configure_ice",
    "current_ice_config",
    "ice_config_from_settings",
    "install",
    "munge_publisher_answer",
    "parse_sdp",
    "reset_ice",
    "rtc_configuration",
]
