"""NATS subject mapping.

Room names and identities are user data: they may contain '.', '*', '>' or spaces, which are
subject syntax. Every user-supplied token is encoded (base64url, no padding, prefixed so that an
empty name still yields a token) before it goes into a subject.
"""

from __future__ import annotations

import base64
import re

_SAFE_DC = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def encode_token(value: str) -> str:
    """Encode arbitrary text as one subject token: only [A-Za-z0-9_-]."""
    raw = base64.urlsafe_b64encode(value.encode("utf-8")).decode("ascii").rstrip("=")
    return "t" + raw


def decode_token(token: str) -> str:
    if not token.startswith("t"):
        raise ValueError(f"not an encoded subject token: {token!r}")
    body = token[1:]
    body += "=" * (-len(body) % 4)
    return base64.urlsafe_b64decode(body.encode("ascii")).decode("utf-8")


def check_dc(dc: str) -> str:
    if not _SAFE_DC.match(dc):
        raise ValueError(f"datacenter name {dc!r} must match {_SAFE_DC.pattern}")
    return dc


def check_node(node: str) -> str:
    if not re.match(r"^[A-Za-z0-9_-]{1,64}$", node):
        raise ValueError(f"node id {node!r} must be 1-64 characters of [A-Za-z0-9_-]")
    return node


# --- event subjects (captured by the per-DC events stream) --------------------------------

def events_prefix(dc: str) -> str:
    return f"events.{check_dc(dc)}"


def event_subject(dc: str, event_type: str, room: str | None) -> str:
    """events.<dc>.<category>.<name>.<room-token>; event types look like 'participant.joined'."""
    room_token = encode_token(room) if room is not None else "_"
    return f"{events_prefix(dc)}.{event_type}.{room_token}"


def room_events_filter(dc: str, room: str) -> str:
    return f"{events_prefix(dc)}.*.*.{encode_token(room)}"


def room_events_any_dc_filter(room: str) -> str:
    """events.<any dc>.<category>.<name>.<room token>: a room's events in the replica stream,
    which gathers every DC's."""
    return f"events.*.*.*.{encode_token(room)}"


def event_type_filter(dc: str, event_type: str) -> str:
    """Every event of one type in `dc`, whatever its room (e.g. 'node.down')."""
    return f"{events_prefix(dc)}.{event_type}.>"


def usage_subject(dc: str, room: str | None) -> str:
    room_token = encode_token(room) if room is not None else "_"
    return f"usage.{check_dc(dc)}.sample.{room_token}"


def usage_filter(dc: str) -> str:
    return f"usage.{check_dc(dc)}.sample.>"


def rollup_subject(dc: str) -> str:
    return f"billing.{check_dc(dc)}.rollup"


def telemetry_subject(dc: str, kind: str) -> str:
    return f"telemetry.{check_dc(dc)}.{kind}"


def telemetry_room_subject(dc: str, kind: str, room: str) -> str:
    """telemetry.<dc>.<kind>.<room-token>: kind is `track` or `subscription` (docs/analytics.md)."""
    return telemetry_subject(dc, f"{kind}.{encode_token(room)}")


def telemetry_room_filter(dc: str, room: str) -> str:
    return telemetry_subject(dc, f"*.{encode_token(room)}")


def telemetry_filter(dc: str) -> str:
    return telemetry_subject(dc, ">")


# --- heartbeats (core NATS, one per service process and second) ---------------------------

def heartbeat_subject(dc: str, service: str) -> str:
    return f"heartbeat.{dc}.{service}"


def heartbeat_filter(dc: str | None = None) -> str:
    """Heartbeats of every service of `dc`, or of every DC when None."""
    return f"heartbeat.{dc}.*" if dc else "heartbeat.*.*"


# --- control (request/reply, core NATS, never persisted) ----------------------------------

def room_request_subject(dc: str, method: str) -> str:
    return f"ctl.{check_dc(dc)}.room.{method}"


def usage_request_subject(dc: str) -> str:
    """The billing service's usage API (`GET /usage` at the edge)."""
    return f"ctl.{check_dc(dc)}.billing.usage"


def telemetry_request_subject(dc: str) -> str:
    """The billing service's room analytics (`GET /stats/rooms/{room}` at the edge)."""
    return f"ctl.{check_dc(dc)}.billing.room_stats"


def media_node_subject(node: str, method: str) -> str:
    return f"ctl.media.{check_node(node)}.{method}"


def media_export_subject(node: str) -> str:
    """Relay -> the publisher's media node: export a track (shared.contracts.relay)."""
    return media_node_subject(node, "export")


def relay_subscribe_subject(dc: str) -> str:
    """Media node -> its DC's relay (queue group `relay`): deliver a remote track."""
    return f"ctl.relay.{check_dc(dc)}.subscribe"


def relay_stats_subject(dc: str) -> str:
    return f"ctl.relay.{check_dc(dc)}.stats"


def session_to_node_subject(node: str, participant_sid: str) -> str:
    """Signal -> media: client frames of one session."""
    return f"sess.{check_node(node)}.{participant_sid}.up"


def sessions_to_node_filter(node: str) -> str:
    """Client frames of every session a media node hosts."""
    return session_to_node_subject(node, "*")


def session_to_signal_subject(participant_sid: str) -> str:
    """Media -> signal: server frames for one session (any signal instance may hold the WS)."""
    return f"sess.client.{participant_sid}.down"


def session_resume_subject(participant_sid: str) -> str:
    """Signal -> the media node holding this session (only that node answers)."""
    return f"sess.resume.{participant_sid}"


def room_data_subject(room: str) -> str:
    """Data packets between the media nodes of one room (core NATS, not persisted; crosses DCs
    over the leafnode links while they are up)."""
    return f"data.{encode_token(room)}"


# --- JetStream -----------------------------------------------------------------------------

def stream_name(kind: str, dc: str) -> str:
    return f"{kind.upper()}_{check_dc(dc).upper().replace('-', '_')}"


def stream_subjects(kind: str, dc: str) -> list[str]:
    """What the per-DC stream `<KIND>_<DC>` captures: `<kind>.<dc>.>`."""
    return [f"{kind}.{check_dc(dc)}.>"]


def jetstream_domain_api(dc: str) -> str:
    """The JetStream API prefix of datacenter `dc`'s domain, as other DCs reach it."""
    return f"$JS.{check_dc(dc)}.API"


def jetstream_next_subject(stream: str, durable: str) -> str:
    """JetStream's pull request for the next messages of a durable consumer (MSG.NEXT)."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
