"""What a signal instance shutting down tells its clients (services/signal/handover.py)."""

from __future__ import annotations

import asyncio

from livekit.protocol import models, rtc

from services.signal.handover import BridgeRef, plan, queries_by_node, shutdown_leave
from services.signal.rtc import DOWN_QUEUE, Bridge, RtcEndpoint
from shared.auth import TokenVerifier
from shared.bus import BusTimeout
from shared.contracts.control import ResumableAnswer, ResumableQuery

BRIDGES = [BridgeRef("PA_a", "media-1", "c-a", "js"), BridgeRef("PA_b", "media-2", "c-b", "swift"),
           BridgeRef("PA_c", "media-1", "c-c", "js")]


def test_one_question_per_media_node_naming_the_asking_connection() -> None:
    assert queries_by_node(BRIDGES) == {"media-1": {"PA_a": "c-a", "PA_c": "c-c"}, "media-2": {"PA_b": "c-b"}}
    assert queries_by_node([]) == {}


def test_sessions_no_node_vouched_for_rejoin_in_full() -> None:
    handover = plan(BRIDGES, resumable={"PA_c", "PA_unknown"})
    assert handover.resume == ["PA_c"] and handover.close == []
    assert handover.reconnect == ["PA_a", "PA_b"]  # e.g. never ICE-connected, or the node did not answer
    nobody = plan(BRIDGES, resumable=set())
    assert nobody.resume == [] and nobody.reconnect == ["PA_a", "PA_b", "PA_c"]


def test_resumable_clients_of_the_rust_core_get_a_close_instead_of_a_leave() -> None:
    bridges = [BridgeRef("PA_py", "m", "c1", "python"), BridgeRef("PA_rs", "m", "c2", "rust"),
               BridgeRef("PA_node", "m", "c3", "Node"), BridgeRef("PA_js", "m", "c4", "js"),
               BridgeRef("PA_none", "m", "c5", ""), BridgeRef("PA_stale", "m", "c6", "python")]
    handover = plan(bridges, resumable={"PA_py", "PA_rs", "PA_node", "PA_js", "PA_none"})
    assert handover.close == ["PA_py", "PA_rs", "PA_node"]
    assert handover.resume == ["PA_js", "PA_none"]  # an SDK that does not say is told what LiveKit tells
    assert handover.reconnect == ["PA_stale"]  # not resumable: a full rejoin, whatever the SDK


def test_leave_frames_say_resume_or_reconnect_and_never_give_up() -> None:
    resume = shutdown_leave(True).leave
    reconnect = shutdown_leave(False).leave
    assert resume.action == rtc.LeaveRequest.Action.RESUME
    assert reconnect.action == rtc.LeaveRequest.Action.RECONNECT
    for leave in (resume, reconnect):
        assert leave.can_reconnect  # clients older than protocol 13 read only this
        assert leave.reason == models.DisconnectReason.SERVER_SHUTDOWN


class NodeAnswers:
    """The bus as RtcEndpoint.hand_over sees it: media-1 vouches for what it is given, media-2
    never answers."""

    def __init__(self, resumable: list[str]) -> None:
        self.resumable = resumable
        self.asked: list[tuple[str, dict[str, str]]] = []

    async def request(self, subject: str, data: bytes, timeout: float = 2.0) -> bytes:
        self.asked.append((subject, ResumableQuery.decode(data).sessions))
        if subject == "ctl.media.media-1.resumable":
            return ResumableAnswer(resumable=self.resumable).encode()
        raise BusTimeout(subject)


async def test_hand_over_queues_each_clients_word_and_waits_only_while_bridges_stay() -> None:
    bus = NodeAnswers(resumable=["PA_js", "PA_py", "PA_elsewhere"])
    endpoint = RtcEndpoint(bus=bus, verifier=TokenVerifier({"k": "s" * 32}), dc="dc1", node_id="signal-1")  # type: ignore[arg-type]
    queues = {sid: asyncio.Queue[tuple[bytes, str | None]](DOWN_QUEUE)
              for sid in ("PA_js", "PA_py", "PA_raw", "PA_far")}
    endpoint.bridges = {
        "PA_js": Bridge("media-1", "c1", queues["PA_js"], "js"),
        "PA_py": Bridge("media-1", "c2", queues["PA_py"], "python"),
        "PA_raw": Bridge("media-1", "c3", queues["PA_raw"], "js"),  # not vouched for: never connected ICE
        "PA_far": Bridge("media-2", "c4", queues["PA_far"], "js"),  # its node does not answer
    }

    async def clients_leave() -> None:
        await asyncio.sleep(0.2)
        endpoint.bridges.clear()

    leaving = asyncio.ensure_future(clients_leave())
    started = asyncio.get_running_loop().time()
    handover = await endpoint.hand_over(wait=5)
    await leaving
    assert asyncio.get_running_loop().time() - started < 1, "waited although every client had gone"
    assert sorted(bus.asked) == [("ctl.media.media-1.resumable", {"PA_js": "c1", "PA_py": "c2", "PA_raw": "c3"}),
                                 ("ctl.media.media-2.resumable", {"PA_far": "c4"})]
    assert (handover.resume, handover.close, sorted(handover.reconnect)) == (["PA_js"], ["PA_py"], ["PA_far", "PA_raw"])

    def told(sid: str) -> list[tuple[int | None, str | None]]:
        frames = [queues[sid].get_nowait() for _ in range(queues[sid].qsize())]
        return [(rtc.SignalResponse.FromString(data).leave.action if data else None, close) for data, close in frames]

    assert told("PA_js") == [(rtc.LeaveRequest.Action.RESUME, None)]  # the client closes the WebSocket
    assert told("PA_py") == [(None, "shutdown")]
    assert told("PA_raw") == told("PA_far") == [(rtc.LeaveRequest.Action.RECONNECT, None)]
