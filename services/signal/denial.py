"""Refusing a WebSocket upgrade with a plain HTTP answer (what LiveKit's clients expect).

uvicorn's sans-io WebSocket protocol sends such a denial correctly, then logs that the ASGI app
"returned without completing handshake". The filter drops exactly one such line per denial we
sent, so a real handshake bug still shows in the log.
"""

from __future__ import annotations

import logging

from fastapi import WebSocket
from starlette.responses import PlainTextResponse

_NOISE = "ASGI callable returned without completing handshake."
_pending = 0


async def deny(ws: WebSocket, status: int, message: str) -> None:
    global _pending
    _pending += 1
    await ws.send_denial_response(PlainTextResponse(message, status_code=status, headers={
        "Access-Control-Allow-Origin": "*"}))


class DenialNoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        global _pending
        if _pending > 0 and record.getMessage() == _NOISE:
            _pending -= 1
            return False
        return True
