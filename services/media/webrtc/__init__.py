"""aiortc adapter layer of the media service: ICE setup, SDP munging, and ``MediaPeer`` (one
RTCPeerConnection with a synchronous SRTP fast path for RTP-level forwarding)."""

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
from .peer import (
    MediaPeer,
    MediaPeerClosedError,
    MediaPeerError,
    MediaPeerTimeoutError,
    NullTrack,
    OutgoingTrack,
)
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
    "munge_publisher_answer",
    "parse_sdp",
    "reset_ice",
    "rtc_configuration",
]
