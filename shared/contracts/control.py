"""Typed control messages (request/reply over core NATS) between signal, room and media.

Unlike events these are not persisted: they are commands and their answers. Each message is a
pydantic model; `encode`/`decode` give the wire form, so no service builds dicts by hand.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.errors import ContractError

M = TypeVar("M", bound="ControlMessage")


class ControlDecodeError(ContractError, ValueError):
    pass


class ControlMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls: type[M], raw: bytes) -> M:
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise ControlDecodeError(f"malformed {cls.__name__}: {exc.error_count()} error(s): {exc}") from exc


class ClientDetails(ControlMessage):
    sdk: str = ""
    version: str = ""
    protocol: int = 0
    client_protocol: int = 0
    os: str = ""
    os_version: str = ""
    device_model: str = ""
    browser: str = ""
    browser_version: str = ""
    network: str = ""
    capabilities: list[str] = []
    address: str = ""


class PermissionSpec(ControlMessage):
    can_subscribe: bool = True
    can_publish: bool = True
    can_publish_data: bool = True
    can_publish_sources: list[int] = []  # livekit TrackSource values
    can_update_metadata: bool = False
    hidden: bool = False
    recorder: bool = False
    agent: bool = False
    # Not granted by tokens here; carried so RoomService.UpdateParticipant loses no field.
    can_subscribe_metrics: bool = False
    can_manage_agent_session: bool = False


class RoomSpec(ControlMessage):
    name: str
    sid: str = ""
    empty_timeout: int = 0
    departure_timeout: int = 0
    max_participants: int = 0
    metadata: str = ""
    creation_time_ms: int = 0


class JoinRequest(ControlMessage):
    """signal -> room: admit this participant and place it on a media node."""

    project: str  # API key the token was signed with
    room: str
    identity: str
    name: str = ""
    metadata: str = ""
    attributes: dict[str, str] = {}
    kind: int = 0
    permission: PermissionSpec = PermissionSpec()
    room_config: dict[str, object] = {}
    signal_node: str = ""
    reconnect: bool = False
    participant_sid: str = ""  # on resume


class JoinAdmission(ControlMessage):
    ok: bool
    status: int = 200  # HTTP status for the client when not ok
    error: str = ""
    room: RoomSpec | None = None
    participant_sid: str = ""
    node_id: str = ""
    replaced_sid: str = ""  # old session of the same identity, to be closed


class OpenSession(ControlMessage):
    """signal -> media node: create the LiveKit session for an admitted participant."""

    project: str
    room: RoomSpec
    participant_sid: str
    identity: str
    name: str = ""
    metadata: str = ""
    attributes: dict[str, str] = {}
    kind: int = 0
    permission: PermissionSpec = PermissionSpec()
    client: ClientDetails = ClientDetails()
    auto_subscribe: bool = True
    adaptive_stream: bool = False
    subscriber_allow_pause: bool = False
    signal_node: str = ""
    replaced_sid: str = ""
    token_expires_at: int = 0
    reconnect: bool = False
    connection_id: str = ""  # the signal WebSocket serving it; down frames carry it (CONNECTION_HEADER)


class SessionOpened(ControlMessage):
    ok: bool
    error: str = ""
    status: int = 200
    resumed: bool = False


# On an empty message to `sess.<node>.<sid>.up`: the signal instance lost the bus and is back;
# the frames it held meanwhile went before this one. The node resends the room state.
RESYNC_HEADER = "Meshrtc-Resync"
# On a frame to the client (`sess.client.<sid>.down`): the signal WebSocket it is for (a frame for
# another WebSocket of the same session is dropped), and, on the last one, why the WebSocket closes.
CONNECTION_HEADER = "Meshrtc-Connection"
CLOSE_HEADER = "Meshrtc-Close"


class CloseSession(ControlMessage):
    """signal -> media: the client's WebSocket is gone (or the client left)."""

    participant_sid: str
    reason: str = "signal_closed"
    graceful: bool = False  # client sent leave
    connection_id: str = ""  # a close from a connection the session already left is ignored


class ResumeSession(ControlMessage):
    """signal -> whichever media node holds the session (`sess.resume.<sid>`): the client came
    back with `reconnect=1&sid=...` on a new WebSocket; re-attach the session to it."""

    participant_sid: str
    project: str
    room: str
    identity: str
    signal_node: str = ""
    connection_id: str = ""
    reconnect_reason: int = 0
    token_expires_at: int = 0


class SessionResumed(ControlMessage):
    ok: bool
    node_id: str = ""
    error: str = ""


class ResumableQuery(ControlMessage):
    """signal -> media node (`ctl.media.<node>.resumable`): a signal instance is shutting down
    and asks which of its clients' sessions a resume through another instance would find."""

    sessions: dict[str, str] = {}  # participant sid -> connection_id of the asking WebSocket


class ResumableAnswer(ControlMessage):
    resumable: list[str] = []  # sids the node holds for that connection and could resume now


class Ack(ControlMessage):
    ok: bool = True
    error: str = ""


class NodeStats(ControlMessage):
    """media -> anyone asking: what a node holds right now (tests, `meshrtc stats`, operators)."""

    node_id: str
    rooms: dict[str, list[str]] = {}  # room name -> participant identities
    subscriptions: dict[str, list[str]] = {}  # participant sid -> track sids it receives
    sessions: int = 0
    tracks: int = 0
    asyncio_tasks: int = 0
    open_peers: int = 0
    rss_bytes: int = 0
    ice_restarts: dict[str, int] = {}  # participant sid -> ICE restarts of its two PeerConnections
    relay: dict[str, int] = {}  # the node's relay-wire counters (packets/bytes in and out, drops)


class ApiCall(ControlMessage):
    """signal -> room: one RoomService call, its grants already checked at the edge."""

    method: str
    body: str  # base64 of the request protobuf
    project: str = ""


class ApiResult(ControlMessage):
    ok: bool
    body: str = ""  # base64 of the response protobuf
    code: str = ""  # twirp error code when not ok
    msg: str = ""
