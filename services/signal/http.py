"""HTTP routes of the signal edge: health, `/rtc` and its validate paths, regions."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, PlainTextResponse, Response

from services.billing.protocol import QueryError, query_from_params, usage_request_subject
from shared.bus import BusTimeout, RemoteError

from .admission import HttpError, authenticate
from .denial import deny
from .twirp import handle_room_service

if TYPE_CHECKING:
    from .app import SignalService

CORS = {"Access-Control-Allow-Origin": "*"}


def build_app(service: SignalService) -> FastAPI:
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

    @app.get("/usage")
    async def usage(request: Request) -> Response:
        """Metered usage from the billing service; needs a roomList token (any room of its API
        key) or a roomAdmin one (its own room only)."""
        try:
            claims = authenticate(service.verifier, request.headers.get("authorization"), None)
        except HttpError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=CORS)
        params = dict(request.query_params)
        if not claims.video.room_list:
            if not claims.video.room_admin:
                return JSONResponse({"error": "permissions denied: roomList or roomAdmin grant required"},
                                    status_code=403, headers=CORS)
            if params.get("room", claims.video.room) != claims.video.room:
                return JSONResponse({"error": f"permissions denied: token is for room {claims.video.room!r}"},
                                    status_code=403, headers=CORS)
            params["room"] = claims.video.room
        try:
            query = query_from_params(params, claims.api_key)
        except QueryError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400, headers=CORS)
        assert service.bus is not None
        try:
            raw = await service.bus.request(usage_request_subject(service.settings.dc), query.to_json(), timeout=15)
        except (BusTimeout, RemoteError) as exc:
            return JSONResponse({"error": f"billing service unavailable: {exc}"}, status_code=503, headers=CORS)
        body = json.loads(raw)
        return JSONResponse(body, status_code=int(body.get("status", 400)) if "error" in body else 200, headers=CORS)

    return app
