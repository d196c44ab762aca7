"""Event envelope and the typed events every service exchanges.

Declared once here; services import these classes and never build event dicts by hand. An event
is an immutable payload (a pydantic model registered under its `type` name and schema version)
wrapped in an `Envelope` carrying identity (`id`), time, origin (`dc`, `node`) and the room.

Decoding (`Envelope.from_dict`) brings a payload stored under an older version up to the current
schema through `UPCASTERS` before validating it; folds over events decide on every type listed by
`event_classes()` (`shared.event_fold`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.errors import ContractError
from shared.ids import new_event_id


class EventDecodeError(ContractError, ValueError):
    """Raised for bytes that are not a valid, known event."""


class EventPayload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1


_REGISTRY: dict[str, type[EventPayload]] = {}
P = TypeVar("P", bound=type[EventPayload])


def register(cls: P) -> P:
    if not cls.TYPE or cls.TYPE in _REGISTRY:
        raise ValueError(f"event type {cls.TYPE!r} missing or declared twice")
    _REGISTRY[cls.TYPE] = cls
    return cls


def event_class(type_name: str) -> type[EventPayload]:
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise EventDecodeError(f"unknown event type {type_name!r}") from None


def known_event_types() -> list[str]:
    return sorted(_REGISTRY)


def event_classes() -> list[type[EventPayload]]:
    """Every declared event payload class, ordered by type name (what a fold must decide on)."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


# A stored payload (the JSON object) of one version, rewritten into the shape of the next version.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Upcasters:
    """Brings a stored payload of an older schema version up to the current one, one version at a
    time: the upcaster registered under (type, v) turns v into v+1, so a v1 payload of a v3 type
    goes through (type, 1) then (type, 2). Events live for years in the SQL store and days in the
    streams, so a version bump registers the step from the previous version instead of breaking
    every reader of older events."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}

    def register(self, type_name: str, from_version: int, step: Upcaster) -> None:
        current = event_class(type_name).VERSION  # unknown type: EventDecodeError
        if not 1 <= from_version < current:
            raise ValueError(f"{type_name} is at v{current}: no upcaster from v{from_version} can exist")
        if (type_name, from_version) in self._steps:
            raise ValueError(f"upcaster {type_name} v{from_version}->v{from_version + 1} declared twice")
        self._steps[(type_name, from_version)] = step

    def upcast(self, type_name: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
        """`payload` (stored as `type_name` v`version`) in the current schema of `type_name`."""
        current = event_class(type_name).VERSION
        if version > current:
            raise EventDecodeError(f"{type_name} v{version} is newer than this build understands (v{current})")
        while version < current:
            step = self._steps.get((type_name, version))
            if step is None:
                raise EventDecodeError(f"{type_name} v{version} cannot be read: no upcaster to v{version + 1}")
            payload = step(dict(payload))  # a copy: the step may rewrite it in place
            version += 1
        return payload


UPCASTERS = Upcasters()


def upcaster(type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Decorator registering `step` as the (type_name, from_version) -> from_version + 1 upcaster."""

    def register_step(step: Upcaster) -> Upcaster:
        UPCASTERS.register(type_name, from_version, step)
        return step

    return register_step


@dataclass(frozen=True, slots=True)
class Envelope:
    id: str
    type: str
    ts: int  # unix milliseconds
    dc: str
    node: str
    room: str | None
    v: int
    payload: EventPayload = field(compare=False)

    @classmethod
    def new(
        cls,
        payload: EventPayload,
        *,
        dc: str,
        node: str,
        room: str | None = None,
        event_id: str | None = None,
        ts: int | None = None,
    ) -> Envelope:
        return cls(
            id=event_id or new_event_id(),
            type=payload.TYPE,
            ts=int(time.time() * 1000) if ts is None else ts,
            dc=dc,
            node=node,
            room=room,
            v=payload.VERSION,
            payload=payload,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "ts": self.ts,
            "dc": self.dc,
            "node": self.node,
            "room": self.room,
            "v": self.v,
            "payload": self.payload.model_dump(mode="json"),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Envelope:
        try:
            type_name = data["type"]
            payload_cls = event_class(type_name)
            payload = UPCASTERS.upcast(type_name, int(data.get("v", 1)), data.get("payload") or {})
            return cls(
                id=str(data["id"]),
                type=type_name,
                ts=int(data["ts"]),
                dc=str(data["dc"]),
                node=str(data["node"]),
                room=data.get("room"),
                v=payload_cls.VERSION,  # the payload now has the current schema, whatever was stored
                payload=payload_cls.model_validate(payload),
            )
        except EventDecodeError:
            raise
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise EventDecodeError(f"malformed event: {exc}") from exc

    @classmethod
    def from_json(cls, raw: bytes | str) -> Envelope:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EventDecodeError(f"event is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise EventDecodeError("event is not a JSON object")
        return cls.from_dict(data)


# ---------------------------------------------------------------------------------------------
# Shared value types


class TrackKind(StrEnum):
    AUDIO = "audio"
    VIDEO = "video"
    DATA = "data"


class Direction(StrEnum):
    UPSTREAM = "upstream"  # client -> server
    DOWNSTREAM = "downstream"  # server -> client
    RELAY_OUT = "relay_out"  # relay -> remote relay
    RELAY_IN = "relay_in"


class LinkStatus(StrEnum):
    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"


class TrackWire(BaseModel):
    """How a published track's RTP looks as its publisher sends it: what a node needs to forward
    that RTP when it arrives through the relay instead of from the publisher's PeerConnection."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    kind: str  # audio | video
    mime_type: str
    clock_rate: int
    payload_types: list[int]
    rtx_payload_types: list[int] = []
    extensions: dict[str, int] = {}  # header extension URI -> id
    rids: list[str] = []  # simulcast layers sent, empty when not simulcast


class TrackPayload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    sid: str
    participant_sid: str
    name: str = ""
    kind: TrackKind
    source: int = 0  # livekit TrackSource enum value
    muted: bool = False
    width: int = 0
    height: int = 0
    simulcast: bool = False
    mime_type: str = ""
    info: str = ""  # base64 of the livekit TrackInfo protobuf, so nothing LiveKit-visible is lost
    wire: TrackWire | None = None


# ---------------------------------------------------------------------------------------------
# Room events


@register
class RoomCreated(EventPayload):
    TYPE: ClassVar[str] = "room.created"
    sid: str
    name: str
    empty_timeout: int = 0
    departure_timeout: int = 0
    max_participants: int = 0
    metadata: str = ""
    project: str = ""


@register
class RoomMetadataUpdated(EventPayload):
    TYPE: ClassVar[str] = "room.metadata_updated"
    sid: str
    metadata: str


@register
class RoomFinished(EventPayload):
    TYPE: ClassVar[str] = "room.finished"
    sid: str
    reason: str = ""
    merged_sids: list[str] = []  # concurrent creations (other DCs) folded into this room: they end too


# ---------------------------------------------------------------------------------------------
# Participant events


@register
class ParticipantJoined(EventPayload):
    TYPE: ClassVar[str] = "participant.joined"
    sid: str
    room_sid: str
    identity: str
    name: str = ""
    metadata: str = ""
    attributes: dict[str, str] = {}
    kind: int = 0
    node: str
    signal_node: str = ""
    project: str = ""
    info: str = ""  # base64 ParticipantInfo


@register
class ParticipantEvictRequested(EventPayload):
    """A DC admitted `identity` again while its old session `sid` lives in another DC: the DC
    hosting `sid` closes it (duplicate identity), as it would for a local replacement."""

    TYPE: ClassVar[str] = "participant.evict_requested"
    sid: str
    identity: str
    dc: str  # the DC that hosts `sid` and acts on this
    reason: str = "DUPLICATE_IDENTITY"  # livekit DisconnectReason name


@register
class ParticipantActive(EventPayload):
    TYPE: ClassVar[str] = "participant.active"
    sid: str
    identity: str


@register
class ParticipantUpdated(EventPayload):
    TYPE: ClassVar[str] = "participant.updated"
    sid: str
    identity: str
    name: str | None = None
    metadata: str | None = None
    attributes: dict[str, str] | None = None
    permission: str | None = None  # base64 ParticipantPermission
    info: str = ""


@register
class ParticipantLeft(EventPayload):
    TYPE: ClassVar[str] = "participant.left"
    sid: str
    identity: str
    reason: str = ""
    aborted: bool = False  # never became active (participant_connection_aborted)


# ---------------------------------------------------------------------------------------------
# Track events


@register
class TrackPublished(EventPayload):
    TYPE: ClassVar[str] = "track.published"
    track: TrackPayload
    node: str


@register
class TrackMuted(EventPayload):
    TYPE: ClassVar[str] = "track.muted"
    sid: str
    participant_sid: str
    muted: bool


@register
class TrackUnpublished(EventPayload):
    TYPE: ClassVar[str] = "track.unpublished"
    sid: str
    participant_sid: str


# ---------------------------------------------------------------------------------------------
# Node events


@register
class NodeUp(EventPayload):
    TYPE: ClassVar[str] = "node.up"
    node_id: str
    service: str
    dc: str
    address: str = ""
    version: str = ""


@register
class NodeHeartbeat(EventPayload):
    TYPE: ClassVar[str] = "node.heartbeat"
    node_id: str
    service: str
    dc: str
    participants: int = 0
    tracks: int = 0
    load: float = 0.0  # 0..1, share of the node's capacity in use
    draining: bool = False
    interval_ms: int = 1000


@register
class NodeDown(EventPayload):
    TYPE: ClassVar[str] = "node.down"
    node_id: str
    service: str
    dc: str
    reason: str = ""  # "shutdown", "missed_heartbeats", "bus_disconnected"


# ---------------------------------------------------------------------------------------------
# Link state (relay mesh)


@register
class LinkStateChanged(EventPayload):
    TYPE: ClassVar[str] = "link.state"
    src_dc: str
    dst_dc: str
    status: LinkStatus
    rtt_ms: float = 0.0
    loss: float = 0.0  # 0..1


# ---------------------------------------------------------------------------------------------
# Usage (metering)


@register
class UsageSample(EventPayload):
    """Counters for one (participant, track, direction) over [start_ms, end_ms)."""

    TYPE: ClassVar[str] = "usage.sample"
    project: str
    room: str
    room_sid: str = ""
    participant_sid: str = ""
    identity: str = ""
    track_sid: str = ""
    direction: Direction
    bytes: int = 0
    packets: int = 0
    connection_ms: int = 0
    start_ms: int
    end_ms: int


@register
class UsageRollup(EventPayload):
    """One minute of one participant's metered usage in one direction, as billing committed it
    (docs/billing-events.md). `revision` grows when late samples change a published minute; the
    highest revision of a `key` is the truth."""

    TYPE: ClassVar[str] = "usage.rollup"
    key: str
    revision: int
    project: str
    room: str
    room_sid: str = ""
    participant_sid: str
    identity: str = ""
    direction: Direction
    minute_start_ms: int
    minute_end_ms: int
    bytes: int = 0
    packets: int = 0
    connection_ms: int = 0
    samples: int = 0


# ---------------------------------------------------------------------------------------------
# Telemetry (track analytics, docs/analytics.md). Published by media nodes every few seconds on
# `telemetry.<dc>.<track|subscription>.<room-token>` (TELEMETRY_<DC>); counters named `*_total`
# are cumulative since the track (or subscription) started, the rest describe the last interval.


class LayerSwitchReason(StrEnum):
    REQUESTED = "requested"  # the subscriber's UpdateTrackSettings (size, quality, pause)
    CONGESTION = "congestion"  # the downstream bandwidth estimate moved it down
    RECOVERED = "recovered"  # the congestion cleared and it moved back up
    PUBLISHER = "publisher"  # the publisher stopped or resumed a layer (its bandwidth, dynacast)


class LayerSwitch(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    at_ms: int  # unix ms of the decision (the forwarder then switches on the next keyframe)
    from_layer: int
    to_layer: int
    reason: LayerSwitchReason


class LayerStats(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    layer: int  # 0 q, 1 h, 2 f (0 for a non-simulcast track)
    packets_per_s: float = 0.0
    fps: float = 0.0
    active: bool = True  # packets arrived within the last second


class TelemetryPayload(EventPayload):
    """What both telemetry samples carry (docs/analytics.md has each field's meaning per kind)."""

    project: str = ""
    room: str
    room_sid: str = ""
    track_sid: str
    participant_sid: str  # the publisher (telemetry.track) or the subscriber (telemetry.subscription)
    identity: str = ""
    kind: TrackKind
    interval_ms: int
    bytes_total: int = 0
    packets_total: int = 0
    frames_total: int = 0
    bitrate_bps: float = 0.0
    fps: float = 0.0
    packet_loss: float = 0.0  # fraction 0..1
    jitter_ms: float = 0.0
    plis_total: int = 0


@register
class TrackTelemetry(TelemetryPayload):
    """A published track as this node receives it from its publisher: frames and fps of the best
    layer received, loss and jitter of the worst, PLIs this node sent the publisher."""

    TYPE: ClassVar[str] = "telemetry.track"
    mime_type: str = ""
    layers: list[LayerStats] = []
    dynacast_max_layer: int | None = None  # highest layer the publisher was told to send; None: all
    subscribers: int = 0


@register
class SubscriptionTelemetry(TelemetryPayload):
    """One subscriber's leg of a track, as this node sends it (bytes: RTP payload, what a
    receiver's getStats counts as bytesReceived) and as the subscriber's last receiver report
    tells us (loss, jitter)."""

    TYPE: ClassVar[str] = "telemetry.subscription"
    publisher_sid: str
    rtt_ms: float = 0.0  # from LSR/DLSR of the same report
    remb_bps: int = 0  # the subscriber's last REMB, 0 if it sends none
    nacks_total: int = 0  # NACKed packets asked for by the subscriber
    firs_total: int = 0
    layer: int = -1  # layer being forwarded now (-1 none yet)
    target_layer: int = -1  # layer the forwarder switches to on the next keyframe
    requested_layer: int = -1  # what the subscriber asked for
    bandwidth_cap: int = -1  # highest layer the bandwidth estimate allows
    paused: bool = False
    switches: list[LayerSwitch] = []  # decisions since the previous sample
