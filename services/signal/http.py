"""HTTP routes of the signal edge: health, `/rtc` and its validate paths, regions."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, PlainTextResponse, Response

from shared.auth import Claims
from shared.bus import BusTimeout, RemoteError
from shared.contracts.billing import MAX_WINDOW_S, QueryError, RoomStatsQuery, query_from_params
from shared.contracts.subjects import telemetry_request_subject, usage_request_subject

from .admission import HttpError, authenticate
from .denial import deny
from .twirp import handle_room_service

if TYPE_CHECKING:
    from .ports import HttpHost

CORS = {"Access-Control-Allow-Origin": "*"}


def build_app(service: HttpHost) -> FastAPI:
    app = FastAPI(title="meshrtc signal", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"],
                       expose_headers=["*"])

    @app.api_route("/", methods=["GET", "HEAD"])
    async def root() -> Response:
        return PlainTextResponse("OK")

    @app.get("/healthz")
    async def health() -> Response:
        healthy = service.bus is not None and service.bus.is_connected
        return JSONResponse({"status": "ok" if healthy else "degraded", "node": service.node_id,
                             "dc": service.settings.dc}, status_code=200 if healthy else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.websocket("/rtc")
    async def rtc_ws(ws: WebSocket) -> None:
        await service.rtc.handle(ws)

    @app.get("/rtc")
    async def rtc_plain() -> Response:
        return PlainTextResponse("WebSocket upgrade required", status_code=404)

    @app.get("/rtc/validate")
    async def rtc_validate(request: Request) -> Response:
        try:
            service.rtc.validate(request.headers.get("authorization"), dict(request.query_params),
                                 request.headers.get("user-agent", ""))
        except HttpError as exc:
            return PlainTextResponse(exc.message, status_code=exc.status, headers=CORS)
        return PlainTextResponse("success", headers=CORS)

    # Single-PC signalling (/rtc/v1) is not offered: both SDKs fall back to /rtc on a plain 404.
    @app.websocket("/rtc/v1")
    async def rtc_v1_ws(ws: WebSocket) -> None:
        await deny(ws, 404, "v1 signalling is not supported")

    @app.get("/rtc/v1")
    @app.get("/rtc/v1/validate")
    async def rtc_v1_validate() -> Response:
        return PlainTextResponse("v1 signalling is not supported", status_code=404, headers=CORS)

    @app.api_route("/twirp/livekit.RoomService/{method}", methods=["POST", "GET"])
    async def room_service(request: Request, method: str) -> Response:
        assert service.bus is not None
        return await handle_room_service(request, method, service.bus, service.settings.dc, service.verifier)

    @app.get("/settings/regions")
    async def regions(request: Request) -> Response:
        try:
            authenticate(service.verifier, request.headers.get("authorization"), None)
        except HttpError as exc:
            return PlainTextResponse(exc.message, status_code=exc.status, headers=CORS)
        return JSONResponse({"regions": service.region_list()}, headers={"Cache-Control": "max-age=30"})

    def room_reader(request: Request, room: str | None) -> Claims | Response:
        """The token's claims if it may read `room` (None: any room): a roomList grant covers
        every room of its API key, a roomAdmin grant its own room only."""
        try:
            claims = authenticate(service.verifier, request.headers.get("authorization"), None)
        except HttpError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=CORS)
        if claims.video.room_list:
            return claims
        if not claims.video.room_admin:
            return JSONResponse({"error": "permissions denied: roomList or roomAdmin grant required"},
                                status_code=403, headers=CORS)
        if (room if room is not None else claims.video.room) != claims.video.room:
            return JSONResponse({"error": f"permissions denied: token is for room {claims.video.room!r}"},
                                status_code=403, headers=CORS)
        return claims

    async def ask_billing(subject: str, payload: bytes) -> Response:
        assert service.bus is not None
        try:
            raw = await service.bus.request(subject, payload, timeout=15)
        except (BusTimeout, RemoteError) as exc:
            return JSONResponse({"error": f"billing service unavailable: {exc}"}, status_code=503, headers=CORS)
        body = json.loads(raw)
        return JSONResponse(body, status_code=int(body.get("status", 400)) if "error" in body else 200, headers=CORS)

    @app.get("/usage")
    async def usage(request: Request) -> Response:
        """Metered usage from the billing service; needs a roomList token (any room of its API
        key) or a roomAdmin one (its own room only)."""
        params = dict(request.query_params)
        claims = room_reader(request, params.get("room"))
        if isinstance(claims, Response):
            return claims
        if not claims.video.room_list:
            params["room"] = claims.video.room
        try:
            query = query_from_params(params, claims.api_key)
        except QueryError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400, headers=CORS)
        return await ask_billing(usage_request_subject(service.settings.dc), query.to_json())

    @app.get("/stats/rooms/{room}")
    async def room_stats(request: Request, room: str) -> Response:
        """Track analytics of a room (docs/analytics.md): the latest sample of every track and
        subscription within `?window=` seconds (default 15), and the layer switches in it."""
        claims = room_reader(request, room)
        if isinstance(claims, Response):
            return claims
        window = request.query_params.get("window", "15")
        if not window.isdigit() or not 1 <= int(window) <= MAX_WINDOW_S:
            return JSONResponse({"error": f"window must be 1..{MAX_WINDOW_S} seconds, got {window!r}"},
                                status_code=400, headers=CORS)
        query = RoomStatsQuery(project=claims.api_key, room=room, window_s=int(window))
        return await ask_billing(telemetry_request_subject(service.settings.dc), query.model_dump_json().encode())

    return app
