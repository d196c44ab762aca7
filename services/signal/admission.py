"""Turning an authenticated `/rtc` request into an admitted, placed session: token checks as
LiveKit's `ValidateConnectRequest`, then room admission and media-node placement over the bus."""

from __future__ import annotations

from dataclasses import dataclass

from livekit.protocol import models

from shared.auth import AuthError, Claims, TokenVerifier, bearer_token
from shared.bus import Bus, BusTimeout, RemoteError
from shared.contracts.control import JoinAdmission, JoinRequest, PermissionSpec
from shared.contracts.subjects import room_request_subject
from shared.errors import SignalError

from .params import ConnectParams, ParamError

_SOURCES = {
    "camera": models.TrackSource.CAMERA,
    "microphone": models.TrackSource.MICROPHONE,
    "screen_share": models.TrackSource.SCREEN_SHARE,
    "screen_share_audio": models.TrackSource.SCREEN_SHARE_AUDIO,
}
_KINDS = {"standard": 0, "ingress": 1, "egress": 2, "sip": 3, "agent": 4, "connector": 5, "bridge": 6}


class HttpError(SignalError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def authenticate(verifier: TokenVerifier, authorization: str | None, query_token: str | None) -> Claims:
    try:
        token = bearer_token(authorization, query_token)
    except AuthError as exc:
        raise HttpError(exc.http_status, str(exc)) from None
    if not token:
        raise HttpError(401, "no permissions to access the room")
    try:
        return verifier.verify(token)
    except AuthError as exc:
        raise HttpError(exc.http_status, str(exc)) from None


def check_join_grants(claims: Claims) -> str:
    """Returns the room name; raises HttpError as LiveKit does for an unusable token."""
    if not claims.video.room_join:
        raise HttpError(401, "permissions denied: token has no roomJoin grant")
    if not claims.identity:
        raise HttpError(400, "identity cannot be empty")
    if not claims.video.room:
        raise HttpError(400, "no room name")
    return claims.video.room


def permission_from_claims(claims: Claims) -> PermissionSpec:
    video = claims.video
    return PermissionSpec(
        can_subscribe=video.can_subscribe_effective(),
        can_publish=video.can_publish_effective(),
        can_publish_data=video.can_publish_data_effective(),
        can_publish_sources=[_SOURCES[s.lower()] for s in (video.can_publish_sources or []) if s.lower() in _SOURCES],
        can_update_metadata=bool(video.can_update_own_metadata),
        hidden=bool(video.hidden),
        recorder=bool(video.recorder),
        agent=bool(video.agent),
    )


@dataclass(frozen=True)
class Admitted:
    request: JoinRequest
    admission: JoinAdmission


async def admit(bus: Bus, dc: str, signal_node: str, claims: Claims, params: ConnectParams) -> Admitted:
    room = check_join_grants(claims)
    attributes = dict(claims.attributes)
    if params.attributes:
        if not claims.video.can_update_own_metadata:
            raise HttpError(401, "permissions denied: attributes need canUpdateOwnMetadata")
        attributes.update(params.attributes)
    request = JoinRequest(
        project=claims.api_key,
        room=room,
        identity=claims.identity,
        name=claims.name,
        metadata=claims.metadata,
        attributes=attributes,
        kind=_KINDS.get(claims.kind, 0),
        permission=permission_from_claims(claims),
        room_config=claims.room_config or {},
        signal_node=signal_node,
        reconnect=params.reconnect,
        participant_sid=params.participant_sid,
    )
    try:
        raw = await bus.request(room_request_subject(dc, "join"), request.encode(), timeout=5.0)
    except (BusTimeout, RemoteError) as exc:
        raise HttpError(503, f"room service unavailable: {exc}") from None
    admission = JoinAdmission.decode(raw)
    if not admission.ok:
        raise HttpError(admission.status or 500, admission.error or "join refused")
    return Admitted(request, admission)


__all__ = ["Admitted", "HttpError", "ParamError", "admit", "authenticate", "check_join_grants"]
