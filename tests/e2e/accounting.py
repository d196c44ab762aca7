"""Exactly-once accounting across an infrastructure fault, shared by test_db_restart and
test_nats_restart: a deployment of `meshrtc serve` processes, a local webhook receiver, and the
checks that compare the JetStream streams with what the database, the receiver and billing hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa
from aiohttp import web
from livekit import api

from services.room.webhooks import WEBHOOK_SOURCE_TYPES, webhook_id
from shared.config import Settings, settings_to_env
from shared.contracts.subjects import room_events_filter, stream_name, usage_subject
from shared.db import make_engine, upgrade
from shared.natsserver import NatsServer, _set_parent_death_signal, free_port

from .conftest import API_KEY, API_SECRET
from .sdk_helpers import wait_for

Envelope = dict[str, object]


class Deployment:
    """NATS and one process per service, configured as `meshrtc dev` would. NATS keeps its
    JetStream store and port across `stop_nats()` / `start_nats()`, as a DC's server does."""

    def __init__(self, database_url: str, webhook_url: str, logs: Path, room: str) -> None:
        self.nats = NatsServer(store_dir=str(logs / "nats"), log_file=str(logs / "nats.log"))
        Path(self.nats.store_dir).mkdir(exist_ok=True)
        self.nats.start()
        self.room = room
        self.http_port = free_port()
        self.url = f"ws://127.0.0.1:{self.http_port}"
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.settings = Settings(nats_url=self.nats.url, database_url=database_url,
                                 api_keys={API_KEY: API_SECRET}, http_port=self.http_port,
                                 advertise_ips=["127.0.0.1"], webhook_urls=[webhook_url], dev=True)
        self.logs = logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        upgrade(self.settings.database_url)
        env = {**os.environ, **settings_to_env(self.settings), "PYTHONUNBUFFERED": "1"}
        for service in ("room", "billing", "media", "signal"):
            with open(self.logs / f"{service}.log", "wb") as log:
                self.processes[service] = subprocess.Popen(
                    [sys.executable, "-m", "meshrtc", "serve", service], stdout=log, stderr=subprocess.STDOUT,
                    env={**env, "MESHRTC_NODE_ID": f"{service}-dc1-1"}, preexec_fn=_set_parent_death_signal)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                # up once signal answers and the room service has heard the media node (else 503)
                if httpx.get(self.http_url + "/", timeout=1).status_code == 200 and \
                        "media node media-dc1-1 is up" in (self.logs / "room.log").read_text(errors="replace"):
                    return
            time.sleep(0.3)
        raise RuntimeError("deployment did not come up in 90 s")

    def stop_nats(self, kill: bool = False) -> None:
        """SIGTERM, as an operator's or a supervisor's restart does, or SIGKILL (a crash); the
        store stays either way."""
        if kill:
            self.nats.kill()
        else:
            self.nats.stop(remove_store=False)

    def start_nats(self) -> None:
        self.nats.start()

    def check_alive(self) -> None:
        for service, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"{service} exited with {process.returncode}:\n"
                                     f"{(self.logs / f'{service}.log').read_text(errors='replace')[-3000:]}")

    def token(self, identity: str) -> str:
        return api.AccessToken(API_KEY, API_SECRET).with_identity(identity).with_grants(
            api.VideoGrants(room_join=True, room=self.room)).to_jwt()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.nats.stop()


class WebhookLog:
    """A webhook receiver that verifies each POST and records the ids of one room's webhooks."""

    def __init__(self, room: str) -> None:
        self.room = room
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.ids: list[str] = []
        self.verifier = api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET))

    async def handle(self, request: web.Request) -> web.Response:
        event = self.verifier.receive(await request.text(), request.headers.get("Authorization", ""))
        if event.room.name == self.room:
            self.ids.append(event.id)
        return web.Response(text="ok")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[WebhookLog]:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await runner.cleanup()


async def stream_envelopes(nats_url: str, stream: str, subject: str) -> list[Envelope]:
    """Every message of `stream` on `subject`, in stream order (an ephemeral consumer)."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(subject, stream=stream)
        envelopes: list[Envelope] = []
        while True:
            try:
                batch = await sub.fetch(256, timeout=1)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            for msg in batch:
                envelopes.append(json.loads(msg.data))
                await msg.ack()
        await sub.unsubscribe()
        return envelopes
    finally:
        await nc.close()


def sql(url: str, query: str, **params: object) -> list[tuple[object, ...]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(query), params)]
    finally:
        engine.dispose()


def payload(env: Envelope) -> dict[str, object]:
    body = env["payload"]
    assert isinstance(body, dict)
    return body


async def settled_events(deployment: Deployment, left: int, within: float = 90) -> list[Envelope]:
    """The room's events in the stream, once `left` participants have left and the database holds
    exactly the stream's ids; then asserts each event is in the stream once and stored once."""
    room, url = deployment.room, deployment.settings.database_url
    events: list[Envelope] = []
    stored: list[object] = []

    async def settled() -> bool:
        nonlocal events, stored
        events = await stream_envelopes(deployment.nats.url, stream_name("events", "dc1"),
                                        room_events_filter("dc1", room))
        rows = await asyncio.to_thread(sql, url, "SELECT id FROM events WHERE room = :room", room=room)
        stored = [row[0] for row in rows]
        departures = sum(1 for e in events if e["type"] == "participant.left")
        return departures >= left and {e["id"] for e in events} == set(stored)

    deadline = time.monotonic() + within
    while not await settled() and time.monotonic() < deadline:
        await asyncio.sleep(2)
    published = [e["id"] for e in events]
    print(f"events: {len(published)} published, {len(stored)} stored; "
          f"{dict(Counter(str(e['type']) for e in events))}")
    assert len(set(published)) == len(published), \
        f"events published twice: {[i for i, n in Counter(published).items() if n > 1]}"
    assert sorted(map(str, stored)) == sorted(map(str, published)), "events lost or doubled in the database"
    return events


def check_participants(events: list[Envelope], identities: list[str]) -> None:
    """Everyone who took part joined once and left once, and nobody else did."""
    for kind in ("participant.joined", "participant.left"):
        seen = Counter(str(payload(e)["identity"]) for e in events if e["type"] == kind)
        assert seen == Counter(identities), f"{kind}: {dict(seen)}, expected each of {identities} once"


async def check_webhooks(hooks: WebhookLog, events: list[Envelope], database_url: str) -> int:
    """Every webhook the events make was delivered once (by id), and recorded as delivered."""
    expected = {webhook_id(str(e["id"])) for e in events if e["type"] in WEBHOOK_SOURCE_TYPES}
    assert await wait_for(lambda: set(hooks.ids) >= expected, 60), \
        f"webhooks missing: {sorted(expected - set(hooks.ids))}"
    await asyncio.sleep(1)  # a second delivery of the last one would be late, not absent
    doubled = [i for i, n in Counter(hooks.ids).items() if n > 1]
    assert not doubled, f"webhooks delivered twice: {doubled}"
    delivered = await asyncio.to_thread(
        sql, database_url, "SELECT webhook_id FROM webhook_deliveries WHERE room = :room", room=hooks.room)
    assert sorted(str(row[0]) for row in delivered) == sorted(hooks.ids)
    print(f"webhooks: {len(hooks.ids)} delivered, each once")
    return len(hooks.ids)


@dataclass
class Usage:
    samples: list[Envelope] = field(default_factory=list)  # billed (per participant) samples
    counted: dict[tuple[str, str], int] = field(default_factory=dict)  # bytes in the samples
    billed: dict[tuple[str, str], int] = field(default_factory=dict)  # bytes in the rollups


async def check_usage(deployment: Deployment, within: float = 60) -> Usage:
    """No usage sample is in the stream twice, and the rollups hold exactly the bytes the media
    node counted in its samples, per participant and direction."""
    room, url = deployment.room, deployment.settings.database_url
    usage = Usage()

    async def settled() -> bool:
        everything = await stream_envelopes(deployment.nats.url, stream_name("usage", "dc1"),
                                            usage_subject("dc1", room))
        ids = Counter(str(e["id"]) for e in everything)
        assert all(n == 1 for n in ids.values()), f"usage samples twice: {[i for i, n in ids.items() if n > 1]}"
        usage.samples = [e for e in everything if not payload(e)["track_sid"]]
        totals: dict[tuple[str, str], int] = defaultdict(int)
        for env in usage.samples:
            body = payload(env)
            totals[(str(body["participant_sid"]), str(body["direction"]))] += int(body["bytes"])  # type: ignore[call-overload]
        usage.counted = dict(totals)
        rows = await asyncio.to_thread(
            sql, url, "SELECT participant_sid, direction, SUM(bytes) FROM usage_rollups "
            "WHERE room = :room GROUP BY participant_sid, direction", room=room)
        usage.billed = {(str(r[0]), str(r[1])): int(r[2]) for r in rows}  # type: ignore[call-overload]
        return bool(usage.counted) and usage.billed == usage.counted

    deadline = time.monotonic() + within
    while not await settled() and time.monotonic() < deadline:
        await asyncio.sleep(2)
    print(f"usage: {len(usage.samples)} samples, {sum(usage.counted.values()):,d} bytes counted by media, "
          f"{sum(usage.billed.values()):,d} rolled up")
    assert usage.billed == usage.counted, "usage rollups differ from the media node's samples"
    return usage
