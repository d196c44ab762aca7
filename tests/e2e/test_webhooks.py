"""Durable webhooks against `meshrtc dev`: LiveKit's Python SDK joins, publishes and leaves; a
receiver in this process verifies every webhook with livekit-api's WebhookReceiver. A receiver
that is down for half a minute misses nothing, gets everything in order and nothing twice;
`meshrtc webhooks replay` re-sends with the same ids."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from livekit import api, rtc
from livekit.protocol.webhook import WebhookEvent

from services.room.webhooks import CONTENT_TYPE, CONTEXT_TYPES, replay_events, url_hash
from shared.db import make_engine
from shared.eventstore import EventStore
from shared.natsserver import free_port

from .conftest import API_KEY, API_SECRET, DevServer, start_dev_server, stop_dev_server
from .sdk_helpers import publish_synthetic, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420), pytest.mark.filterwarnings("ignore:.*HMAC key.*")]

ROOM_ONE, ROOM_TWO = "wh-one", "wh-two"


class Receiver:
    """A webhook endpoint that can go down (stop listening) and come back on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.verifier = api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET))
        self.events: list[WebhookEvent] = []
        self.problems: list[str] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        if request.headers.get("Content-Type") != CONTENT_TYPE:
            self.problems.append(f"content type {request.headers.get('Content-Type')!r}")
        try:
            event = self.verifier.receive(body, request.headers.get("Authorization", ""))
        except Exception as exc:  # the SDK raises bare exceptions
            self.problems.append(f"unverifiable webhook: {exc!r}")
            return web.Response(status=401, text="bad signature")
        self.events.append(event)
        return web.Response(text="ok")

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def names(self, room: str | None = None) -> list[str]:
        return [e.event for e in self.events if room is None or e.room.name == room]

    def ids(self) -> list[str]:
        return [e.id for e in self.events]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.up()
    try:
        yield receiver
    finally:
        await receiver.down()


def start_with_retry(tmp: Path, *args: str, attempts: int = 3) -> DevServer:
    """start_dev_server, tried again on a machine too busy to bring it up in its 60 s."""
    for attempt in range(1, attempts + 1):
        try:
            return start_dev_server(tmp, *args)
        except RuntimeError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def room_service_pid(server: DevServer) -> int:
    """The `meshrtc serve room` child of the dev supervisor."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    for pid in map(int, children):
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-3:-1] == [b"serve", b"room"]:
            return pid
    raise AssertionError("no room service process")


def stored_webhooks(db_url: str) -> list[tuple[str | None, WebhookEvent]]:
    """Every webhook the event store implies, in store order (the order they must arrive in)."""
    engine = make_engine(db_url)
    try:
        stored = EventStore(engine).read(types=CONTEXT_TYPES)
    finally:
        engine.dispose()
    return [(env.room, event) for env, event in replay_events([s.envelope for s in stored], 0)]


def delivered_ids(db_url: str, url: str) -> set[str]:
    engine = make_engine(db_url)
    try:
        return {d.webhook_id for d in EventStore(engine).webhook_deliveries(url_hash(url))}
    finally:
        engine.dispose()


def run_replay(tmp: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESHRTC_DATABASE_URL": db_url, "MESHRTC_API_KEYS": f"{API_KEY}:{API_SECRET}"}
    env.pop("MESHRTC_WEBHOOK_URLS", None)
    return subprocess.run([sys.executable, "-m", "meshrtc", "webhooks", "replay", *args], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=120)


async def test_webhooks_in_order_through_an_outage_and_replay(tmp_path: Path, receiver: Receiver) -> None:
    started = time.time()
    data_dir = tmp_path / "data"
    db_url = f"sqlite:///{data_dir / 'meshrtc.db'}"
    server = await asyncio.to_thread(start_with_retry, tmp_path, "--webhook", receiver.url,
                                     "--data-dir", str(data_dir))
    alice, bob = rtc.Room(), rtc.Room()
    try:
        # -- receiver up: alice joins, publishes audio, leaves --------------------------------
        await alice.connect(server.url, server.token("alice", ROOM_ONE))
        publisher = await publish_synthetic(alice, video=False)
        assert await wait_for(lambda: "track_published" in receiver.names(ROOM_ONE), 30), receiver.names()
        await publisher.stop()
        await alice.disconnect()
        assert await wait_for(lambda: "participant_left" in receiver.names(ROOM_ONE), 30), receiver.names()
        assert receiver.names(ROOM_ONE) == ["room_started", "participant_joined", "track_published",
                                            "track_unpublished", "participant_left"]
        assert not receiver.problems, receiver.problems
        joined = receiver.events[1]
        assert (joined.participant.identity, joined.participant.name, joined.room.name) == ("alice", "alice",
                                                                                            ROOM_ONE)
        assert joined.participant.state == api.ParticipantInfo.State.ACTIVE
        published = receiver.events[2]
        assert published.track.type == api.TrackType.AUDIO and published.track.sid.startswith("TR_")
        assert published.participant.sid == joined.participant.sid
        assert receiver.events[3].track.sid == published.track.sid
        assert all(e.id.startswith("EV_") and e.created_at >= int(started) - 1 for e in receiver.events)
        before_outage = len(receiver.events)

        # -- receiver down for ~30 s: bob comes and goes in another room; room one finishes ----
        await receiver.down()
        down_at = time.monotonic()
        await bob.connect(server.url, server.token("bob", ROOM_TWO))
        await asyncio.sleep(2)
        await bob.disconnect()
        # the room service (and its webhook worker) dies mid-retry and is restarted by `meshrtc dev`
        await asyncio.sleep(3)
        os.kill(room_service_pid(server), signal.SIGKILL)
        await asyncio.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        assert len(receiver.events) == before_outage
        # nothing was skipped while it was down: the worker is still at bob's room_started
        assert len(delivered_ids(db_url, receiver.url)) == before_outage

        # -- receiver up: everything arrives, in order, once -----------------------------------
        await receiver.up()
        done = ["room_finished"]
        assert await wait_for(lambda: receiver.names(ROOM_ONE)[-1:] == done and
                              receiver.names(ROOM_TWO)[-1:] == done, 90, 0.2), receiver.names()
        await asyncio.sleep(1)  # nothing else should trickle in
        assert not receiver.problems, receiver.problems
        log = server.log()
        assert "not delivered" in log  # the worker did meet the outage
        assert log.count("webhooks to " + receiver.url + ": room state rebuilt") >= 2  # and was restarted
        ids = receiver.ids()
        assert len(ids) == len(set(ids)), f"duplicates: {ids}"
        expected = stored_webhooks(db_url)
        assert ids == [event.id for _, event in expected]  # every stored event, in stream order
        assert receiver.names(ROOM_ONE) == ["room_started", "participant_joined", "track_published",
                                            "track_unpublished", "participant_left", "room_finished"]
        assert receiver.names(ROOM_TWO) == ["room_started", "participant_joined", "participant_left",
                                            "room_finished"]
        assert [e.participant.identity for e in receiver.events if e.room.name == ROOM_TWO
                and e.event.startswith("participant")] == ["bob", "bob"]
        assert delivered_ids(db_url, receiver.url) == set(ids)
        for got, (_, want) in zip(receiver.events, expected, strict=True):
            assert (got.event, got.room.sid, got.participant.sid, got.track.sid, got.created_at) == (
                want.event, want.room.sid, want.participant.sid, want.track.sid, want.created_at)
        first_delivery = list(receiver.events)
    finally:
        await alice.disconnect()
        await bob.disconnect()
        await asyncio.to_thread(stop_dev_server, server)

    # -- replay from the event store: the same webhooks, same ids, same order --------------------
    receiver.events.clear()
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started - 1))
    result = await asyncio.to_thread(run_replay, tmp_path, db_url, "--since", since, "--url", receiver.url)
    assert result.returncode == 0, result.stderr
    assert f"sent {len(first_delivery)} webhook(s)" in result.stdout, result.stdout
    assert receiver.ids() == [e.id for e in first_delivery]
    assert [(e.event, e.room.name, e.participant.identity) for e in receiver.events] == [
        (e.event, e.room.name, e.participant.identity) for e in first_delivery]
    assert not receiver.problems, receiver.problems

    receiver.events.clear()
    result = await asyncio.to_thread(run_replay, tmp_path, db_url, "--since", "10m", "--room", ROOM_TWO,
                                     "--url", receiver.url)
    assert result.returncode == 0, result.stderr
    assert receiver.ids() == [e.id for e in first_delivery if e.room.name == ROOM_TWO]

    # a receiver that is down: replay says so and fails
    await receiver.down()
    result = await asyncio.to_thread(run_replay, tmp_path, db_url, "--since", str(int(started) - 1),
                                     "--url", receiver.url)
    assert result.returncode == 1
    assert f"webhooks to {receiver.url} stopped after 0" in result.stderr
