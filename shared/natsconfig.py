"""nats-server configuration for one datacenter of a multi-DC deployment (docs/multi-dc.md).

Every DC runs its own NATS with JetStream in its own domain (`jetstream.domain = <dc>`), so a DC
cut off from the others keeps creating streams and consumers. DCs join in a hub-and-spoke tree of
leafnode connections (the hub sets `leaf_port`, each spoke sets `hub_leaf_url`); a leafnode graph
with a cycle is rejected by the servers, hence the tree.

Accounts: `APP` (JetStream enabled) carries all application traffic and is the account bridged over
the leafnodes; `SYS` is the system account and is not bridged. Clients that present no credentials
are mapped to the `APP` user (`no_auth_user`), so services keep connecting to a plain
`nats://host:port` URL. These credentials are for a lab or a private network: production puts TLS
and nkeys/creds on the leafnode links (see docs/multi-dc.md).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from shared.contracts.subjects import check_dc

APP_ACCOUNT = "APP"
APP_USER = "app"
APP_PASSWORD = "app"
SYS_USER = "sys"
SYS_PASSWORD = "sys"

_DURATION = re.compile(r"^\d+(ms|s|m|h)$")


def _leaf_url_with_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("nats-leaf", "nats", "tls"):
        raise ValueError(f"hub_leaf_url must look like nats-leaf://host:port, got {url!r}")
    if not parts.hostname or not parts.port:
        raise ValueError(f"hub_leaf_url needs a host and a port, got {url!r}")
    if "@" in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=f"{APP_USER}:{APP_PASSWORD}@{parts.netloc}"))


def dc_nats_config(
    dc: str,
    *,
    host: str,
    port: int,
    store_dir: str,
    http_port: int | None = None,
    leaf_port: int | None = None,
    hub_leaf_url: str | None = None,
    ping_interval: str = "2s",
    ping_max: int = 2,
    leaf_no_advertise: bool = False,
) -> str:
    """The nats-server config text for datacenter `dc`.

    `leaf_port`: this DC is the hub and accepts leafnodes on host:leaf_port.
    `hub_leaf_url`: this DC is a spoke and solicits a leafnode to the hub ("nats-leaf://host:port").
    `leaf_no_advertise`: the hub does not tell spokes its own leafnode address, so they only ever
    dial their configured URL (set it when a proxy sits in front of the hub: otherwise spokes learn
    the real address and bypass the proxy).
    `ping_interval`/`ping_max` decide how fast a dead link is noticed (~interval x (max + 1)).
    """
    check_dc(dc)
    if leaf_port is not None and hub_leaf_url is not None:
        raise ValueError("a DC is either the hub (leaf_port) or a spoke (hub_leaf_url), not both")
    if not _DURATION.match(ping_interval):
        raise ValueError(f"ping_interval must be a duration like '2s', got {ping_interval!r}")
    if ping_max < 1:
        raise ValueError(f"ping_max must be >= 1, got {ping_max}")
    if "\"" in store_dir or "\n" in store_dir:
        raise ValueError(f"store_dir must not contain quotes or newlines: {store_dir!r}")
    lines = [
        f"# meshrtc datacenter {dc}: own JetStream domain, "
        + ("leafnode hub" if leaf_port is not None else "leafnode spoke" if hub_leaf_url else "standalone"),
        f'server_name: "{dc}"',
        f'listen: "{host}:{port}"',
    ]
    if http_port is not None:
        lines.append(f'http: "{host}:{http_port}"')
    lines += [
        f'ping_interval: "{ping_interval}"',
        f"ping_max: {ping_max}",
        "max_payload: 4MB",
        "",
        "accounts {",
        f"  {APP_ACCOUNT}: {{",
        "    jetstream: enabled",
        f'    users: [ {{user: "{APP_USER}", password: "{APP_PASSWORD}"}} ]',
        "  }",
        "  SYS: {",
        f'    users: [ {{user: "{SYS_USER}", password: "{SYS_PASSWORD}"}} ]',
        "  }",
        "}",
        "system_account: SYS",
        f'no_auth_user: "{APP_USER}"',
        "",
        "jetstream {",
        f"  domain: {dc}",
        f'  store_dir: "{store_dir}"',
        "}",
    ]
    if leaf_port is not None:
        lines += ["", "leafnodes {", f'  listen: "{host}:{leaf_port}"']
        if leaf_no_advertise:
            lines.append("  no_advertise: true")
        lines += ['  reconnect: "1s"', "}"]
    elif hub_leaf_url is not None:
        url = _leaf_url_with_credentials(hub_leaf_url)
        lines += [
            "",
            "leafnodes {",
            '  reconnect: "1s"',
            f'  remotes: [ {{ urls: ["{url}"], account: {APP_ACCOUNT} }} ]',
            "}",
        ]
    return "\n".join(lines) + "\n"
