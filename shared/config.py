"""Configuration from environment variables (and CLI flags, which override them).

Every variable is documented in docs/configuration.md. A bad value raises `ConfigError` whose
message names the variable, so a container exits with one line that says what to fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shared.ids import new_node_id


class ConfigError(ValueError):
    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def parse_api_keys(text: str, variable: str = "MESHRTC_API_KEYS") -> dict[str, str]:
    """`key1:secret1,key2:secret2` (also accepts newlines and `key: secret` as livekit's keys file)."""
    keys: dict[str, str] = {}
    for item in re.split(r"[,\n]", text):
        item = item.strip()
        if not item:
            continue
        if ":" not in item:
            raise ConfigError(variable, f"entry {item.split(':')[0]!r} has no ':secret' part")
        key, secret = (part.strip() for part in item.split(":", 1))
        if not key or not secret:
            raise ConfigError(variable, "API key and secret must both be non-empty")
        keys[key] = secret
    return keys


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(name, f"expected an integer, got {raw!r}") from None


def _list(env: Mapping[str, str], name: str) -> list[str]:
    return [item.strip() for item in env.get(name, "").replace("\n", ",").split(",") if item.strip()]


@dataclass(frozen=True)
class Settings:
    nats_url: str = "nats://127.0.0.1:4222"
    dc: str = "dc1"
    node_id: str = field(default_factory=lambda: new_node_id())
    database_url: str = "sqlite:///meshrtc.db"
    api_keys: dict[str, str] = field(default_factory=dict)
    http_host: str = "127.0.0.1"
    http_port: int = 7880
    advertise_ips: list[str] = field(default_factory=list)
    bind_ip: str = "0.0.0.0"
    rtc_port_min: int = 0
    rtc_port_max: int = 0
    webhook_urls: list[str] = field(default_factory=list)
    region: str = ""
    dev: bool = False
    log_level: str = "INFO"
    heartbeat_ms: int = 500  # node.down after 3 missed beats: a dead media node is noticed within 2 s
    media_capacity: int = 200  # participants a media node accepts before it counts as full
    resume_grace_ms: int = 10000  # a session whose WebSocket dropped waits this long for a resume
    pricing_file: str = ""
    relay_port: int = 0
    relay_keys: dict[str, str] = field(default_factory=dict)
    nats_connect_timeout: float = 10.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0: no separate /metrics listener (signal always serves /metrics)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def require_api_keys(self) -> None:
        if not self.api_keys:
            raise ConfigError("MESHRTC_API_KEYS", "no API key configured (set key:secret)")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    api_keys: dict[str, str] = {}
    if env.get("MESHRTC_API_KEYS"):
        api_keys = parse_api_keys(env["MESHRTC_API_KEYS"])
    if env.get("MESHRTC_API_KEY") or env.get("MESHRTC_API_SECRET"):
        key, secret = env.get("MESHRTC_API_KEY", ""), env.get("MESHRTC_API_SECRET", "")
        if not key:
            raise ConfigError("MESHRTC_API_KEY", "set together with MESHRTC_API_SECRET")
        if not secret:
            raise ConfigError("MESHRTC_API_SECRET", "set together with MESHRTC_API_KEY")
        api_keys[key] = secret
    relay_keys = parse_api_keys(env["MESHRTC_RELAY_KEYS"], "MESHRTC_RELAY_KEYS") if env.get(
        "MESHRTC_RELAY_KEYS"
    ) else {}
    port_range = env.get("MESHRTC_RTC_PORT_RANGE", "")
    port_min = port_max = 0
    if port_range:
        match = re.fullmatch(r"(\d+)-(\d+)", port_range.strip())
        if not match or int(match.group(1)) > int(match.group(2)) or int(match.group(2)) > 65535:
            raise ConfigError("MESHRTC_RTC_PORT_RANGE", f"expected LOW-HIGH, got {port_range!r}")
        port_min, port_max = int(match.group(1)), int(match.group(2))
    settings = Settings(
        nats_url=env.get("MESHRTC_NATS_URL", Settings.nats_url),
        dc=env.get("MESHRTC_DC", Settings.dc),
        node_id=env.get("MESHRTC_NODE_ID") or new_node_id(),
        database_url=env.get("MESHRTC_DATABASE_URL", Settings.database_url),
        api_keys=api_keys,
        http_host=env.get("MESHRTC_HTTP_HOST", Settings.http_host),
        http_port=_int(env, "MESHRTC_HTTP_PORT", Settings.http_port),
        advertise_ips=_list(env, "MESHRTC_ADVERTISE_IPS"),
        bind_ip=env.get("MESHRTC_BIND_IP", Settings.bind_ip),
        rtc_port_min=port_min,
        rtc_port_max=port_max,
        webhook_urls=_list(env, "MESHRTC_WEBHOOK_URLS"),
        region=env.get("MESHRTC_REGION", ""),
        dev=env.get("MESHRTC_DEV", "") in ("1", "true"),
        log_level=env.get("MESHRTC_LOG_LEVEL", "INFO").upper(),
        heartbeat_ms=_int(env, "MESHRTC_HEARTBEAT_MS", Settings.heartbeat_ms),
        media_capacity=_int(env, "MESHRTC_MEDIA_CAPACITY", Settings.media_capacity),
        resume_grace_ms=_int(env, "MESHRTC_RESUME_GRACE_MS", Settings.resume_grace_ms),
        pricing_file=env.get("MESHRTC_PRICING_FILE", ""),
        relay_port=_int(env, "MESHRTC_RELAY_PORT", 0),
        relay_keys=relay_keys,
        nats_connect_timeout=float(_int(env, "MESHRTC_NATS_CONNECT_TIMEOUT", 10)),
        metrics_host=env.get("MESHRTC_METRICS_HOST", "127.0.0.1"),
        metrics_port=_int(env, "MESHRTC_METRICS_PORT", 0),
    )
    from shared.subjects import check_dc

    try:
        check_dc(settings.dc)
    except ValueError as exc:
        raise ConfigError("MESHRTC_DC", str(exc)) from None
    if not settings.nats_url.startswith(("nats://", "tls://", "ws://", "wss://")):
        raise ConfigError("MESHRTC_NATS_URL", f"expected nats://host:port, got {settings.nats_url!r}")
    return settings


def settings_to_env(settings: Settings) -> dict[str, str]:
    """The inverse of load_settings, used by `meshrtc dev` to configure its child processes."""
    env = {
        "MESHRTC_NATS_URL": settings.nats_url,
        "MESHRTC_DC": settings.dc,
        "MESHRTC_DATABASE_URL": settings.database_url,
        "MESHRTC_API_KEYS": ",".join(f"{k}:{v}" for k, v in settings.api_keys.items()),
        "MESHRTC_HTTP_HOST": settings.http_host,
        "MESHRTC_HTTP_PORT": str(settings.http_port),
        "MESHRTC_ADVERTISE_IPS": ",".join(settings.advertise_ips),
        "MESHRTC_BIND_IP": settings.bind_ip,
        "MESHRTC_WEBHOOK_URLS": ",".join(settings.webhook_urls),
        "MESHRTC_DEV": "1" if settings.dev else "0",
        "MESHRTC_LOG_LEVEL": settings.log_level,
        "MESHRTC_HEARTBEAT_MS": str(settings.heartbeat_ms),
        "MESHRTC_MEDIA_CAPACITY": str(settings.media_capacity),
        "MESHRTC_RESUME_GRACE_MS": str(settings.resume_grace_ms),
    }
    if settings.rtc_port_min:
        env["MESHRTC_RTC_PORT_RANGE"] = f"{settings.rtc_port_min}-{settings.rtc_port_max}"
    if settings.pricing_file:
        env["MESHRTC_PRICING_FILE"] = settings.pricing_file
    if settings.region:
        env["MESHRTC_REGION"] = settings.region
    return env
