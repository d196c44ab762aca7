"""A client's signal frames, decoded and handed to their handlers through one table.

Every kind of `SignalRequest` is either handled by the session or listed in `IGNORED` with the
reason (a test checks the two cover the protocol). Unknown and undecodable frames are dropped,
as LiveKit drops them: a client speaking a newer protocol must not lose its session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from google.protobuf.message import DecodeError
from livekit.protocol import rtc

Handler = Callable[[rtc.SignalRequest], Awaitable[None]]

IGNORED: dict[str, str] = {
    "ping": "answered by the signal edge, which owns the WebSocket",
    "ping_req": "answered by the signal edge, which owns the WebSocket",
    "update_layers": "deprecated: simulcast layers come from AddTrackRequest and the SDP",
    "simulate": "test scenarios are not supported; LiveKit clients treat no answer as done",
    "update_audio_track": "audio features (DTX, stereo) are negotiated in SDP; nothing to change here",
    "update_video_track": "video dimensions are read from AddTrackRequest and the layers",
    "publish_data_track_request": "data tracks are not supported yet; clients fall back to data packets",
    "unpublish_data_track_request": "data tracks are not supported yet",
    "update_data_subscription": "data tracks are not supported yet",
    "store_data_blob_request": "data blobs are not supported yet",
    "get_data_blob_request": "data blobs are not supported yet",
}


def request_kinds() -> list[str]:
    """Every kind of request the protocol version we speak defines."""
    return [field.name for field in rtc.SignalRequest.DESCRIPTOR.oneofs_by_name["message"].fields]


class SignalDispatch:
    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        overlap = set(handlers) & set(IGNORED)
        if overlap:
            raise ValueError(f"request kinds both handled and ignored: {sorted(overlap)}")
        self.handlers = dict(handlers)

    async def dispatch(self, data: bytes) -> str | None:
        """Handles one frame; the kind handled, or None for a frame dropped."""
        try:
            request = rtc.SignalRequest.FromString(data)
        except DecodeError:
            return None
        kind = request.WhichOneof("message")
        handler = self.handlers.get(kind) if kind else None
        if handler is None:
            return None
        await handler(request)
        return kind
