"""Connection parameters of `/rtc` (query string of the v0 signalling path), as LiveKit clients
send them. Pure: no I/O."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass

from shared.contracts.control import ClientDetails
from shared.errors import SignalError


class ParamError(SignalError, ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _flag(params: Mapping[str, str], name: str, default: bool) -> bool:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    return raw.lower() in ("1", "true")


def _int(params: Mapping[str, str], name: str) -> int:
    raw = params.get(name, "")
    try:
        return int(raw) if raw else 0
    except ValueError:
        raise ParamError(400, f"{name} must be an integer") from None


@dataclass(frozen=True)
class ConnectParams:
    client: ClientDetails
    auto_subscribe: bool
    adaptive_stream: bool
    subscriber_allow_pause: bool
    reconnect: bool
    participant_sid: str
    reconnect_reason: int
    attributes: dict[str, str]


def parse_connect_params(params: Mapping[str, str], user_agent: str = "", address: str = "") -> ConnectParams:
    attributes: dict[str, str] = {}
    if params.get("attributes"):
        try:
            padded = params["attributes"] + "=" * (-len(params["attributes"]) % 4)
            decoded = json.loads(base64.urlsafe_b64decode(padded))
        except (ValueError, json.JSONDecodeError):
            raise ParamError(400, "attributes must be base64url-encoded JSON") from None
        if not isinstance(decoded, dict) or not all(isinstance(v, str) for v in decoded.values()):
            raise ParamError(400, "attributes must be a JSON object of strings")
        attributes = {str(k): v for k, v in decoded.items()}
    reconnect = _flag(params, "reconnect", False)
    client = ClientDetails(
        sdk=params.get("sdk", ""),
        version=params.get("version", ""),
        protocol=_int(params, "protocol"),
        client_protocol=_int(params, "client_protocol"),
        os=params.get("os", ""),
        os_version=params.get("os_version", ""),
        device_model=params.get("device_model", ""),
        browser=params.get("browser", "") or _browser_from_user_agent(user_agent),
        browser_version=params.get("browser_version", ""),
        network=params.get("network", ""),
        capabilities=[c for c in params.get("capabilities", "").split(",") if c],
        address=address,
    )
    return ConnectParams(
        client=client,
        auto_subscribe=_flag(params, "auto_subscribe", True),
        adaptive_stream=_flag(params, "adaptive_stream", False),
        subscriber_allow_pause=_flag(params, "subscriber_allow_pause", False),
        reconnect=reconnect,
        participant_sid=params.get("sid", "") if reconnect else "",
        reconnect_reason=_int(params, "reconnect_reason"),
        attributes=attributes,
    )


def _browser_from_user_agent(user_agent: str) -> str:
    for name in ("Firefox", "Edg", "Chrome", "Safari"):
        if name + "/" in user_agent:
            return {"Edg": "edge"}.get(name, name.lower())
    return ""
