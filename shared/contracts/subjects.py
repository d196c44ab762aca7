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


def usage_subject(dc: str, room: str | None) -> str:
    room_token = encode_token(room) if room is not None else "_"
    return f"usage.{check_dc(dc)}.sample.{room_token}"


def rollup_subject(dc: str) -> str:
    return f"billing.{check_dc(dc)}.rollup"


def telemetry_subject(dc: str, kind: str) -> str:
    return f"telemetry.{check_dc(dc)}.{kind}"


def telemetry_room_subject(dc: str, kind: str, room: str) -> str:
    """telemetry.<dc>.<kind>.<room-token>: kind is `track` or `subscription` (docs/analytics.md)."""
    return telemetry_subject(dc, f"{kind}.{encode_token(room)}")


def telemetry_room_filter(dc: str, room: str) -> str:
    return telemetry_subject(dc, f"*.{encode_token(room)}")


# --- control (request/reply, core NATS, never persisted) ----------------------------------

def room_request_subject(dc: str, method: str) -> str:
    return f"ctl.{check_dc(dc)}.room.{method}"


def media_node_subject(node: str, method: str) -> str:
    return f"ctl.media.{check_node(node)}.{method}"


def session_to_node_subject(node: str, participant_sid: str) -> str:
    """Signal -> media: client frames of one session."""
    return f"sess.{check_node(node)}.{participant_sid}.up"


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


def stream_name(kind: str, dc: str) -> str:
    return f"{kind.upper()}_{check_dc(dc).upper().replace('-', '_')}"
