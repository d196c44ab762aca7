"""Control messages between media nodes and their DC's relay (NATS request/reply inside one DC).

Subjects and soft-state rules are fixed by docs/multi-dc.md:

* `ctl.relay.<dc>.subscribe` (queue group `relay`): `RelaySubscribe` -> `RelaySubscribed`.
  Repeated every second while the node needs the track; lapses after `ttl_s`; `ttl_s = 0` ends it.
* `ctl.media.<node>.export`: the relay asks the publisher's node for a track: `TrackExport` ->
  `TrackExported`. Same soft-state rules.
* `ctl.relay.<dc>.stats`: `RelayStatsRequest` -> `RelayStats` (counters, paths, link table).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from shared.contracts.control import ControlMessage
from shared.contracts.subjects import (
    check_dc,
    media_export_subject,
    relay_stats_subject,
    relay_subscribe_subject,
)

# The subjects are built in shared.contracts.subjects; named here too, as the rest of this protocol.
__all__ = ["media_export_subject", "relay_stats_subject", "relay_subscribe_subject"]

RELAY_QUEUE = "relay"
DEFAULT_TTL_S = 5.0


def parse_hostport(text: str) -> tuple[str, int]:
    """`ip:port` (IPv6 as `[ip]:port`) -> (host, port); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected ip:port, got {text!r}")
    return host.strip("[]"), int(port)


def _check_hostport(value: str) -> str:
    parse_hostport(value)
    return value


class RelaySubscribe(ControlMessage):
    """media node -> its relay: deliver this (remote) track's packets to `deliver_to`."""

    room: str
    project: str = ""
    track_sid: str = Field(min_length=1)
    origin_dc: str
    origin_node: str = Field(min_length=1)
    subscriber_node: str = ""
    deliver_to: str
    ttl_s: float = Field(default=DEFAULT_TTL_S, ge=0, le=60)

    _deliver_ok = field_validator("deliver_to")(_check_hostport)

    @field_validator("origin_dc")
    @classmethod
    def _dc_ok(cls, value: str) -> str:
        return check_dc(value)


class RelaySubscribed(ControlMessage):
    relay_local: str  # "ip:port" of the relay's local socket (KEYFRAME requests go there)


class TrackExport(ControlMessage):
    """relay -> publisher's media node: send this track's RTP/RTCP to `deliver_to`."""

    track_sid: str = Field(min_length=1)
    deliver_to: str
    ttl_s: float = Field(default=DEFAULT_TTL_S, ge=0, le=60)

    _deliver_ok = field_validator("deliver_to")(_check_hostport)


class TrackExported(ControlMessage):
    source: str  # "ip:port" of the node's relay socket (where KEYFRAME requests go)

    _source_ok = field_validator("source")(_check_hostport)


class RelayStatsRequest(ControlMessage):
    reset_worst_lag: bool = False  # start a new measurement window for `loop_lag_worst_ms`


class LinkInfo(ControlMessage):
    src_dc: str
    dst_dc: str
    status: str
    rtt_ms: float
    loss: float
    age_s: float = 0.0  # 0 for own links; seconds since the gossip that told us about it


class RelayStats(ControlMessage):
    dc: str
    node_id: str
    relay_local: str
    links: list[LinkInfo] = []
    paths: dict[str, list[str]] = {}  # destination DC -> route (list of DCs, self first)
    peer_counters: dict[str, dict[str, int]] = {}  # peer DC -> counter name -> value
    drops: dict[str, int] = {}  # reason -> datagrams dropped
    streams: int = 0
    local_subscribers: int = 0
    loop_lag_ms: float = 0.0
    loop_lag_worst_ms: float = 0.0
