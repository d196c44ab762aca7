"""Configuration from environment variables (and CLI flags, which override them).

Every variable is documented in docs/configuration.md. A bad value raises `ConfigError` whose
message names the variable, so a container exits with one line that says what to fix.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shared.errors import ConfigurationError
from shared.ids import new_node_id


class ConfigError(ConfigurationError, ValueError):
    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def _entries(text: str) -> list[str]:
    """The non-empty items of a comma- or newline-separated list, stripped."""
    return [item.strip() for item in re.split(r"[,\n]", text) if item.strip()]


def parse_api_keys(text: str, variable: str = "MESHRTC_API_KEYS") -> dict[str, str]:
    """`key1:secret1,key2:secret2` (also accepts newlines and `key: secret` as livekit's keys file)."""
    keys: dict[str, str] = {}
    for item in _entries(text):
        if ":" not in item:
            raise ConfigError(variable, f"entry {item.split(':')[0]!r} has no ':secret' part")
        key, secret = (part.strip() for part in item.split(":", 1))
        if not key or not secret:
            raise ConfigError(variable, "API key and secret must both be non-empty")
        keys[key] = secret
    return keys


def _is_dc_name(name: str) -> bool:
    try:
        _check_dc_name(name, "")
    except ConfigError:
        return False
    return True


def _check_dc_name(dc: str, variable: str) -> str:
    from shared.contracts.subjects import check_dc

    try:
        return check_dc(dc)
    except ValueError as exc:
        raise ConfigError(variable, str(exc)) from None


def parse_relay_peers(text: str, variable: str = "MESHRTC_RELAY_PEERS") -> dict[str, str]:
    """`dc2@host:port,dc3@host:port` -> {dc: "host:port"}: each other DC's relay over the direct link."""
    peers: dict[str, str] = {}
    for item in _entries(text):
        dc, sep, address = item.partition("@")
        host, colon, port = address.rpartition(":")
        if not sep or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(variable, f"entry {item!r} is not dc@host:port")
        _check_dc_name(dc.strip(), variable)
        if dc.strip() in peers:
            raise ConfigError(variable, f"datacenter {dc.strip()!r} listed twice")
        peers[dc.strip()] = address.strip()
    return peers


def relay_link_name(dc_a: str, dc_b: str) -> str:
    """The name of the link between two DCs, as MESHRTC_RELAY_KEYS spells it (sorted pair)."""
    return "-".join(sorted((dc_a, dc_b)))


def parse_relay_keys(text: str, dcs: set[str], variable: str = "MESHRTC_RELAY_KEYS") -> dict[str, str]:
    """`dc1-dc2:<64 hex>,…` -> {relay_link_name: hex}. DC names may contain '-', so the pair is
    split where both halves are known DCs (self, MESHRTC_RELAY_PEERS, MESHRTC_DATACENTERS)."""
    keys: dict[str, str] = {}
    for item in _entries(text):
        pair, sep, key = (part.strip() for part in item.partition(":"))
        if not sep:
            raise ConfigError(variable, f"entry {pair!r} has no ':key' part")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", key):
            raise ConfigError(variable, f"key of {pair!r} must be 64 hex digits (32 bytes)")
        splits = [(a, b) for i, ch in enumerate(pair) if ch == "-"
                  if (a := pair[:i]) != (b := pair[i + 1:]) and _is_dc_name(a) and _is_dc_name(b)]
        known = [(a, b) for a, b in splits if a in dcs and b in dcs]
        # a shared keys file may list links between other DCs: unused here, but must be unambiguous
        chosen = known if known else splits
        if len(chosen) != 1:
            raise ConfigError(variable, f"{pair!r} does not name two datacenters (dcA-dcB; known: {sorted(dcs)})")
        name = relay_link_name(*chosen[0])
        if name in keys:
            raise ConfigError(variable, f"link {name} has two keys")
        keys[name] = key.lower()
    return keys


def default_internal_ip() -> str:
    """This host's address as its hostname resolves, else loopback."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(name, f"expected an integer, got {raw!r}") from None


def _port(env: Mapping[str, str], name: str) -> int:
    port = _int(env, name, 0)
    if not 0 <= port < 65536:
        raise ConfigError(name, f"expected a UDP port 0-65535, got {port}")
    return port


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
    relay_port: int = 0  # WAN UDP port (relay <-> relay)
    relay_local_port: int = 0  # UDP port for this DC's media nodes; 0: ephemeral
    relay_peers: dict[str, str] = field(default_factory=dict)  # other DC -> its relay's "host:port"
    relay_keys: dict[str, str] = field(default_factory=dict)  # relay_link_name -> 64 hex digits
    internal_ip: str = "127.0.0.1"  # the address this process advertises inside its DC
    nats_connect_timeout: float = 10.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0: no separate /metrics listener (signal always serves /metrics)
    telemetry_retention_s: int = 86400  # track analytics kept in SQL this long (docs/analytics.md)
    datacenters: list[str] = field(default_factory=list)  # every DC of the mesh; empty: just `dc`

    @property
    def mesh_dcs(self) -> list[str]:
        """The DCs whose events this DC replicates (MESHRTC_DATACENTERS), always including `dc`."""
        return self.datacenters if self.dc in self.datacenters else [*self.datacenters, self.dc]

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
    dc = _check_dc_name(env.get("MESHRTC_DC", Settings.dc), "MESHRTC_DC")
    relay_peers = parse_relay_peers(env.get("MESHRTC_RELAY_PEERS", ""))
    if dc in relay_peers:
        raise ConfigError("MESHRTC_RELAY_PEERS", f"lists this datacenter ({dc}) itself")
    known_dcs = {dc, *relay_peers, *_list(env, "MESHRTC_DATACENTERS")}
    relay_keys = parse_relay_keys(env.get("MESHRTC_RELAY_KEYS", ""), known_dcs)
    port_range = env.get("MESHRTC_RTC_PORT_RANGE", "")
    port_min = port_max = 0
    if port_range:
        match = re.fullmatch(r"(\d+)-(\d+)", port_range.strip())
        if not match or int(match.group(1)) > int(match.group(2)) or int(match.group(2)) > 65535:
            raise ConfigError("MESHRTC_RTC_PORT_RANGE", f"expected LOW-HIGH, got {port_range!r}")
        port_min, port_max = int(match.group(1)), int(match.group(2))
    settings = Settings(
        nats_url=env.get("MESHRTC_NATS_URL", Settings.nats_url),
        dc=dc,
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
        relay_port=_port(env, "MESHRTC_RELAY_PORT"),
        relay_local_port=_port(env, "MESHRTC_RELAY_LOCAL_PORT"),
        relay_peers=relay_peers,
        relay_keys=relay_keys,
        internal_ip=env.get("MESHRTC_INTERNAL_IP") or default_internal_ip(),
        nats_connect_timeout=float(_int(env, "MESHRTC_NATS_CONNECT_TIMEOUT", 10)),
        metrics_host=env.get("MESHRTC_METRICS_HOST", "127.0.0.1"),
        metrics_port=_int(env, "MESHRTC_METRICS_PORT", 0),
        telemetry_retention_s=_int(env, "MESHRTC_TELEMETRY_RETENTION", Settings.telemetry_retention_s),
        datacenters=_list(env, "MESHRTC_DATACENTERS"),
    )
    from shared.contracts.subjects import check_dc

    try:
        check_dc(settings.dc)
    except ValueError as exc:
        raise ConfigError("MESHRTC_DC", str(exc)) from None
    for dc in settings.datacenters:
        try:
            check_dc(dc)
        except ValueError as exc:
            raise ConfigError("MESHRTC_DATACENTERS", str(exc)) from None
    if len(set(settings.datacenters)) != len(settings.datacenters):
        raise ConfigError("MESHRTC_DATACENTERS", f"a datacenter is listed twice: {settings.datacenters}")
    if settings.datacenters and settings.dc not in settings.datacenters:
        raise ConfigError("MESHRTC_DATACENTERS", f"must include this DC ({settings.dc}), got {settings.datacenters}")
    if not settings.datacenters:
        settings = replace(settings, datacenters=[settings.dc])
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
        "MESHRTC_TELEMETRY_RETENTION": str(settings.telemetry_retention_s),
        "MESHRTC_RESUME_GRACE_MS": str(settings.resume_grace_ms),
        "MESHRTC_RELAY_PORT": str(settings.relay_port),
        "MESHRTC_RELAY_LOCAL_PORT": str(settings.relay_local_port),
        "MESHRTC_RELAY_PEERS": ",".join(f"{dc}@{address}" for dc, address in settings.relay_peers.items()),
        "MESHRTC_RELAY_KEYS": ",".join(f"{link}:{key}" for link, key in settings.relay_keys.items()),
        "MESHRTC_INTERNAL_IP": settings.internal_ip,
        "MESHRTC_DATACENTERS": ",".join(settings.mesh_dcs),
    }
    if settings.rtc_port_min:
        env["MESHRTC_RTC_PORT_RANGE"] = f"{settings.rtc_port_min}-{settings.rtc_port_max}"
    if settings.pricing_file:
        env["MESHRTC_PRICING_FILE"] = settings.pricing_file
    if settings.region:
        env["MESHRTC_REGION"] = settings.region
    return env
