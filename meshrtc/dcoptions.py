"""The multi-datacenter options of `meshrtc dev`, checked, and what they become: the NATS config
of this DC and the environment of its services (docs/multi-dc.md).

Pure: `meshrtc/commands/dev.py` reads the flags into `DcOptions` and starts the processes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import ConfigError, parse_api_keys
from shared.contracts.subjects import check_dc
from shared.natsconfig import dc_nats_config

_PEER = re.compile(r"(?P<dc>[^@\s]+)@(?P<host>[^:\s]+):(?P<port>\d{1,5})")
_KEY_NAME = re.compile(r"(?P<a>[^-\s]+)-(?P<b>[^-\s]+)")
_KEY_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class DcOptions:
    dc: str
    datacenters: tuple[str, ...] = ()
    nats_host: str = "127.0.0.1"
    nats_port: int = 0
    nats_http_port: int | None = None
    nats_leaf_port: int | None = None
    nats_hub: str | None = None
    relay_port: int | None = None
    relay_peers: tuple[str, ...] = ()  # "dc2@ip:port"
    relay_keys: dict[str, str] = field(default_factory=dict)  # "dc1-dc2" → 64 hex digits
    internal_ip: str = "127.0.0.1"

    @property
    def multi_dc(self) -> bool:
        return bool(self.datacenters or self.nats_leaf_port or self.nats_hub or self.relay_peers
                    or self.relay_port is not None or self.relay_keys)

    def check(self) -> DcOptions:
        """Raise ConfigError naming the flag at fault; return self when all is well."""
        _check_dc("--dc", self.dc)
        for dc in self.datacenters:
            _check_dc("--datacenters", dc)
        if len(set(self.datacenters)) != len(self.datacenters):
            raise ConfigError("--datacenters", f"lists a datacenter twice: {','.join(self.datacenters)}")
        if self.datacenters and self.dc not in self.datacenters:
            raise ConfigError("--datacenters", f"does not list this DC ({self.dc}): {','.join(self.datacenters)}")
        if self.nats_leaf_port is not None and self.nats_hub is not None:
            raise ConfigError("--nats-hub", "a DC is either the hub (--nats-leaf-port) or a spoke (--nats-hub)")
        if self.nats_hub is not None and not self.nats_hub.startswith(("nats-leaf://", "nats://", "tls://")):
            raise ConfigError("--nats-hub", f"expected nats-leaf://host:port, got {self.nats_hub!r}")
        for peer in self.relay_peers:
            match = _PEER.fullmatch(peer)
            if not match or not 0 < int(match.group("port")) < 65536:
                raise ConfigError("--relay-peer", f"expected dcX@ip:port, got {peer!r}")
            if match.group("dc") == self.dc:
                raise ConfigError("--relay-peer", f"{peer!r} is this DC itself")
            if self.datacenters and match.group("dc") not in self.datacenters:
                raise ConfigError("--relay-peer", f"{peer!r}: {match.group('dc')} is not in --datacenters")
        if self.relay_peers and self.relay_port is None:
            raise ConfigError("--relay-port", "relay peers need this DC's own relay port")
        for name, key in self.relay_keys.items():
            match = _KEY_NAME.fullmatch(name)
            if not match or match.group("a") == match.group("b"):
                raise ConfigError("--relay-key", f"expected dcA-dcB:<64 hex>, got a key named {name!r}")
            if not _KEY_HEX.fullmatch(key):
                raise ConfigError("--relay-key", f"the key of {name} must be 64 hex digits (256 bits)")
        return self

    def nats_config(self, store_dir: Path) -> str:
        return dc_nats_config(
            self.dc, host=self.nats_host, port=self.nats_port, store_dir=str(store_dir),
            http_port=self.nats_http_port, leaf_port=self.nats_leaf_port, hub_leaf_url=self.nats_hub,
        )

    def client_nats_url(self) -> str:
        """What this DC's services connect to: a wildcard listen address is reached on loopback."""
        host = "127.0.0.1" if self.nats_host in ("0.0.0.0", "") else self.nats_host
        return f"nats://{host}:{self.nats_port}"

    def service_env(self) -> dict[str, str]:
        """The relay's settings (MESHRTC_DATACENTERS comes from Settings.datacenters)."""
        env: dict[str, str] = {"MESHRTC_INTERNAL_IP": self.internal_ip}
        if self.relay_port is not None:
            env["MESHRTC_RELAY_PORT"] = str(self.relay_port)
        if self.relay_peers:
            env["MESHRTC_RELAY_PEERS"] = ",".join(self.relay_peers)
        if self.relay_keys:
            env["MESHRTC_RELAY_KEYS"] = ",".join(f"{name}:{key}" for name, key in sorted(self.relay_keys.items()))
        return env


def _check_dc(flag: str, dc: str) -> None:
    try:
        check_dc(dc)
    except ValueError as exc:
        raise ConfigError(flag, str(exc)) from None


def parse_relay_keys(flag_values: list[str], keys_file: Path | None) -> dict[str, str]:
    """`--relay-key dcA-dcB:hex` (repeatable) and `--relay-keys-file` (one per line, or comma-separated)."""
    keys: dict[str, str] = {}
    if keys_file is not None:
        try:
            text = keys_file.read_text()
        except OSError as exc:
            raise ConfigError("--relay-keys-file", f"cannot read {keys_file}: {exc.strerror}") from None
        keys.update(parse_api_keys(text, "--relay-keys-file"))
    for value in flag_values:
        keys.update(parse_api_keys(value, "--relay-key"))
    return keys


def parse_datacenters(text: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (text or "").split(",") if item.strip())
