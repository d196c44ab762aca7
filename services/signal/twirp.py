"""`/twirp/livekit.RoomService/<Method>`: LiveKit's server API at the edge.

Authenticates the bearer token and checks grants as LiveKit does (roomCreate, roomList,
roomAdmin for the request's room), decodes protobuf or JSON bodies, forwards the call to the
room service over the bus and answers in the request's content type. Errors are Twirp JSON.
"""

from __future__ import annotations

import base64
import json

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.auth import AuthError, Claims, TokenVerifier, bearer_token
from shared.bus import Bus, BusTimeout, RemoteError
from shared.contracts.control import ApiCall, ApiResult
from shared.contracts.room_api import REQUESTS, RESPONSES
from shared.contracts.subjects import room_request_subject

MAX_BODY = 1 << 20
STATUS = {"invalid_argument": 400, "malformed": 400, "not_found": 404, "bad_route": 404, "already_exists": 409,
          "permission_denied": 403, "unauthenticated": 401, "resource_exhausted": 429, "failed_precondition": 412,
          "unimplemented": 501, "internal": 500, "unavailable": 503, "deadline_exceeded": 408, "unknown": 500}


def twirp_error(code: str, msg: str) -> JSONResponse:
    return JSONResponse({"code": code, "msg": msg, "meta": {}}, status_code=STATUS.get(code, 500))


def check_grants(method: str, claims: Claims, request: Message) -> str | None:
    """None when allowed, else why not."""
    video = claims.video
    if method in ("CreateRoom", "DeleteRoom"):
        return None if video.room_create else "permissions denied: roomCreate grant required"
    if method == "ListRooms":
        return None if video.room_list else "permissions denied: roomList grant required"
    room = getattr(request, "room", "")
    if not video.room_admin:
        return "permissions denied: roomAdmin grant required"
    if video.room != room:
        return f"permissions denied: token is for room {video.room!r}, not {room!r}"
    return None


async def handle_room_service(request: Request, method: str, bus: Bus, dc: str, verifier: TokenVerifier) -> Response:
    if request.method != "POST":
        return twirp_error("bad_route", "Twirp methods are POST")
    request_type = REQUESTS.get(method)
    if request_type is None:
        return twirp_error("bad_route", f"no such method livekit.RoomService/{method}")
    try:
        token = bearer_token(request.headers.get("authorization"), None)
        if not token:
            return twirp_error("unauthenticated", "authorization header with a Bearer token is required")
        claims = verifier.verify(token)
    except AuthError as exc:
        return twirp_error("unauthenticated", str(exc))
    content_type = request.headers.get("content-type", "application/protobuf").split(";")[0].strip().lower()
    as_json = content_type == "application/json"
    if not as_json and content_type not in ("application/protobuf", "application/x-protobuf"):
        return twirp_error("bad_route", f"unsupported content type {content_type!r}")
    body = await request.body()
    if len(body) > MAX_BODY:
        return twirp_error("malformed", "request body larger than 1 MiB")
    try:
        message = request_type()
        if as_json:
            json_format.Parse(body or b"{}", message, ignore_unknown_fields=True)
        else:
            message.ParseFromString(body)
    except (DecodeError, json_format.ParseError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return twirp_error("malformed", f"could not decode {request_type.__name__}: {exc}")
    denied = check_grants(method, claims, message)
    if denied:
        return twirp_error("permission_denied", denied)
    call = ApiCall(method=method, body=base64.b64encode(message.SerializeToString()).decode(), project=claims.api_key)
    try:
        raw = await bus.request(room_request_subject(dc, "api"), call.encode(), timeout=10.0)
    except (BusTimeout, RemoteError) as exc:
        return twirp_error("unavailable", f"room service unavailable: {exc}")
    result = ApiResult.decode(raw)
    if not result.ok:
        return twirp_error(result.code or "internal", result.msg)
    payload = base64.b64decode(result.body)
    if not as_json:
        return Response(payload, media_type="application/protobuf")
    response = RESPONSES[method].FromString(payload)
    return JSONResponse(json_format.MessageToDict(response, preserving_proto_field_name=True,
                                                  always_print_fields_with_no_presence=True))
