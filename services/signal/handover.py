"""What a signal instance that is shutting down (SIGTERM: a rolling restart behind a load
balancer) tells each of its clients.

Signal keeps no media state, so whether a client can resume is the media node's answer
(`ResumableQuery`). A session a resume through another instance would find gets
`leave{RESUME}`; one it would not find gets `leave{RECONNECT}` (a full rejoin). Either way the
client closes the WebSocket itself.

Clients of the Rust core (Python, Node, Unity, C++ SDKs) are the exception when they could
resume: their WebSocket is just closed. Measured with livekit 1.2.1 (docs/resume.md): after
`leave{RESUME}` the core closes the old WebSocket itself when it reconnects, reports that close
as a second failure while already reconnecting, and keeps a sticky "full reconnect" flag; the
resume succeeds, but the next lost WebSocket becomes a full rejoin. A lone close is one failure:
it resumes the same and leaves nothing behind. Pure: the plan, not the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from livekit.protocol import models, rtc

# Clients act on `action` only; `can_reconnect` is for clients older than protocol 13, and the
# reason is honest: this instance is going away, the session is not.
SHUTDOWN_REASON = models.DisconnectReason.SERVER_SHUTDOWN
# `sdk` query values of SDKs built on the Rust core (livekit-ffi); "rust" is the core's own default.
RUST_CORE_SDKS = frozenset({"rust", "python", "node", "unity", "cpp"})


@dataclass(frozen=True)
class BridgeRef:
    participant_sid: str
    node_id: str
    connection_id: str
    sdk: str = ""


def queries_by_node(bridges: Iterable[BridgeRef]) -> dict[str, dict[str, str]]:
    """One question per media node: participant sid -> the connection asking for it."""
    out: dict[str, dict[str, str]] = {}
    for bridge in bridges:
        out.setdefault(bridge.node_id, {})[bridge.participant_sid] = bridge.connection_id
    return out


def shutdown_leave(resumable: bool) -> rtc.SignalResponse:
    action = rtc.LeaveRequest.Action.RESUME if resumable else rtc.LeaveRequest.Action.RECONNECT
    return rtc.SignalResponse(leave=rtc.LeaveRequest(can_reconnect=True, reason=SHUTDOWN_REASON, action=action))


@dataclass(frozen=True)
class Handover:
    resume: list[str]  # told leave{RESUME}
    close: list[str]  # resumable clients of the Rust core: the WebSocket is closed, no leave
    reconnect: list[str]  # told leave{RECONNECT}


def plan(bridges: Iterable[BridgeRef], resumable: set[str]) -> Handover:
    """Who is told what. A session no node vouched for (the node did not answer, or the
    session never connected ICE) rejoins in full: a resume that finds nothing costs the
    client a failed attempt before it rejoins anyway."""
    handover = Handover(resume=[], close=[], reconnect=[])
    for bridge in bridges:
        if bridge.participant_sid not in resumable:
            handover.reconnect.append(bridge.participant_sid)
        elif bridge.sdk.lower() in RUST_CORE_SDKS:
            handover.close.append(bridge.participant_sid)
        else:
            handover.resume.append(bridge.participant_sid)
    return handover
