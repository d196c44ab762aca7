"""A signal instance shut down gracefully (SIGTERM: a rolling restart behind a load balancer)
hands its clients over: it stops listening, asks the media node which sessions could resume,
and tells the clients how to come back (services/signal/handover.py): Rust-core SDKs that can
resume get their WebSocket closed, other resumable clients `leave{RESUME}` (the browser test,
test_browser_resume.py), the rest `leave{RECONNECT}`; after a leave the WebSocket is left for
the client to close. Two signal instances behind tests/e2e/front.py's TcpFront, as in
test_resume.py; `meshrtc dev` restarts the SIGTERMed instance once it has exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
import warnings
from collections.abc import Iterator

import httpx
import pytest
import websockets
from livekit import rtc
from livekit.protocol import models
from livekit.protocol import rtc as rtc_proto

from .conftest import DevServer, start_dev_server, stop_dev_server
from .front import TcpFront, start_second_signal
from .sdk_helpers import (
    Received,
    ReliableDataLoop,
    count_media,
    delivery_problem,
    publish_synthetic,
    record_connection_events,
    wait_for,
)
from .test_resume import child_pid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
warnings.filterwarnings("ignore", message=".*HMAC key.*")

MAX_VIDEO_GAP = 0.200  # seconds, as for a lost signal WebSocket (test_resume.py)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    tmp = tmp_path_factory.mktemp("devshutdown")
    dev = start_dev_server(tmp)
    second = None
    try:
        second, port = start_second_signal(child_pid(dev, "signal"), tmp / "signal-b.log")
        dev.second_signal_port = port  # type: ignore[attr-defined]
        dev.second_signal_log = tmp / "signal-b.log"  # type: ignore[attr-defined]
        dev.second_pid = second.pid  # type: ignore[attr-defined]
        yield dev
    finally:
        if second is not None:
            second.terminate()
            second.wait(10)
        stop_dev_server(dev)


class RustLog(logging.Handler):
    """What the SDK's Rust core logs (forwarded to the `livekit` logger)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.search(pattern, line)]


@contextlib.contextmanager
def rust_log() -> Iterator[RustLog]:
    handler = RustLog()
    logger = logging.getLogger("livekit")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def signal_serving(dev: DevServer, not_pid: int = 0, timeout: float = 60) -> int:
    """The pid of the dev server's signal instance once it serves again (restarted after an exit)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(AssertionError, httpx.HTTPError):
                pid = child_pid(dev, "signal")
                if pid != not_pid and (await client.get(dev.http_url + "/", timeout=1)).status_code == 200:
                    return pid
            await asyncio.sleep(0.2)
    raise AssertionError("the dev server's signal instance did not come back")


def handover_lines(dev: DevServer) -> list[str]:
    return re.findall(r"shutting down: .*", dev.log())


async def test_sigterm_clients_resume_on_their_sessions(server: DevServer) -> None:
    """Python SDK speaker and viewer (Rust core): their WebSockets are closed without a leave
    (services/signal/handover.py says why), they resume through the other instance, and a later
    drop of that instance's WebSocket is a resume again, not a full rejoin."""
    speaker, viewer = rtc.Room(), rtc.Room()
    received = Received()
    count_media(viewer, received)
    events = record_connection_events({"speaker": speaker, "viewer": viewer})
    left: list[str] = []
    viewer.on("participant_disconnected", lambda p: left.append(p.identity))
    data: list[bytes] = []
    viewer.on("data_received", lambda packet: data.append(packet.data))
    publisher = None
    sender: ReliableDataLoop | None = None
    dev_port = int(server.url.rsplit(":", 1)[1])
    front = TcpFront([dev_port, server.second_signal_port])  # type: ignore[attr-defined]
    await front.start()
    pid = await signal_serving(server)

    def both(kind: str) -> bool:
        return kind in events["speaker"] and kind in events["viewer"]

    try:
        with rust_log() as sdk_log:
            await viewer.connect(front.url, server.token("viewer", "shutdown-room"))
            await speaker.connect(front.url, server.token("speaker", "shutdown-room"))
            assert set(front.routed) == {dev_port}, "both clients should start on the first instance"
            sids = (speaker.local_participant.sid, viewer.local_participant.sid)
            publisher = await publish_synthetic(speaker, 320, 180, audio=False, simulcast=False)
            assert await wait_for(lambda: received.video_frames > 30, 30), "no video before the shutdown"

            sender = ReliableDataLoop(speaker, "shutdown")
            await asyncio.sleep(2)
            before = len(handover_lines(server))
            stopped_at = time.monotonic()
            os.kill(pid, signal.SIGTERM)
            assert await wait_for(lambda: both("reconnected"), 60), f"clients did not come back: {events}"
            resumed_at = time.monotonic()
            assert await wait_for(lambda: len(handover_lines(server)) > before, 15), "no handover logged"
            await asyncio.sleep(3)
            await sender.stop()
            await asyncio.sleep(1.5)  # the last messages in flight

        handover = handover_lines(server)[before]
        print(f"SIGTERM→both resumed {resumed_at - stopped_at:.2f}s; {handover}")
        assert (speaker.local_participant.sid, viewer.local_participant.sid) == sids, "full rejoin, not a resume"
        assert re.match(r"shutting down: 0 client\(s\) told to resume, 2 closed to resume \(Rust core\), "
                        r"0 told to rejoin; 0 still connected", handover), handover
        assert "disconnected" not in events["speaker"] + events["viewer"]
        assert left == [], f"participants left the room: {left}"
        assert [p.identity for p in viewer.remote_participants.values()] == ["speaker"]
        second_log = server.second_signal_log.read_text()  # type: ignore[attr-defined]
        for sid in sids:
            assert f"session {sid} resumed through this instance" in second_log, f"{sid} did not resume there"
        closes = sdk_log.matching(r"received session close")
        assert len(closes) == 2, f"one failure per client expected: {closes}"
        assert not sdk_log.matching(r"restarting connection"), "the SDK escalated to a full rejoin"
        gap = received.longest_video_gap(stopped_at - 1)
        baseline = received.longest_video_gap(stopped_at - 2, stopped_at)
        print(f"worst video gap at the viewer {gap * 1000:.0f} ms (the 2 s before the SIGTERM: "
              f"{baseline * 1000:.0f} ms); data sent {len(sender.sent)}, received {len(data)}")
        assert gap < MAX_VIDEO_GAP, f"video paused {gap * 1000:.0f} ms at the viewer"
        assert (problem := delivery_problem(sender.sent, data)) is None, problem

        # The SDK is left able to resume: the instance now serving them dies, the restarted
        # first one takes the resumes (after a leave{RESUME} this was a full rejoin, see handover.py).
        await signal_serving(server, not_pid=pid)
        for history in events.values():
            history.clear()
        with rust_log() as later_log:
            os.kill(server.second_pid, signal.SIGKILL)  # type: ignore[attr-defined]
            assert await wait_for(lambda: both("reconnected"), 60), f"clients did not come back: {events}"
        assert (speaker.local_participant.sid, viewer.local_participant.sid) == sids, "the later drop was a rejoin"
        assert not later_log.matching(r"restarting connection"), later_log.lines
    finally:
        if sender is not None:
            sender.cancel()
        for task in received.tasks:
            task.cancel()
        if publisher is not None:
            await publisher.stop()
        for room in (speaker, viewer):
            await room.disconnect()
        await front.close()


async def test_sigterm_session_that_cannot_resume_is_told_to_rejoin(server: DevServer) -> None:
    """A raw WebSocket client never connects ICE, so its session cannot resume: it is told
    leave{RECONNECT}, and its WebSocket is left open for it to close."""
    pid = await signal_serving(server)
    before = len(handover_lines(server))
    url = f"{server.url}/rtc?access_token={server.token('raw', 'shutdown-raw')}&protocol=16&sdk=js"
    async with websockets.connect(url) as ws:
        first = rtc_proto.SignalResponse.FromString(await asyncio.wait_for(ws.recv(), 5))
        assert first.WhichOneof("message") == "join"
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        leave = None
        while leave is None and time.monotonic() < deadline:
            response = rtc_proto.SignalResponse.FromString(await asyncio.wait_for(ws.recv(), 10))
            if response.WhichOneof("message") == "leave":
                leave = response.leave
        assert leave is not None, "no leave before the deadline"
        assert leave.action == rtc_proto.LeaveRequest.Action.RECONNECT
        assert leave.can_reconnect and leave.reason == models.DisconnectReason.SERVER_SHUTDOWN
        with pytest.raises(TimeoutError):  # still open: the client closes it
            while True:
                await asyncio.wait_for(ws.recv(), 1)
    assert await wait_for(lambda: len(handover_lines(server)) > before, 10), "no handover logged"
    handover = handover_lines(server)[before]
    print(handover)
    assert re.match(r"shutting down: 0 client\(s\) told to resume, 0 closed to resume \(Rust core\), "
                    r"1 told to rejoin; 0 still connected", handover), handover
