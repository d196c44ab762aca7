"""PostgreSQL restarted mid-call. A dev-style deployment (one NATS, room, billing, media, signal,
each a `meshrtc serve` process) keeps its events, webhook deliveries and usage rollups in a
private PostgreSQL 15 cluster started for this test; the cluster is stopped for a few seconds
during a call (a participant joins and leaves meanwhile) and started again. Nobody is
disconnected, no service exits, and once things settle the database holds every event of the
room exactly once (compared id by id with the JetStream stream), every webhook was delivered
once, and the usage rollups equal the bytes the media node counted in its samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from aiohttp import web
from livekit import api, rtc

from services.room.webhooks import WEBHOOK_SOURCE_TYPES, webhook_id
from shared.config import Settings, settings_to_env
from shared.db import make_engine, upgrade
from shared.natsserver import NatsServer, _set_parent_death_signal, free_port
from shared.subjects import room_events_filter, stream_name, usage_subject

from .conftest import API_KEY, API_SECRET
from .sdk_helpers import publish_synthetic, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
warnings.filterwarnings("ignore", message=".*HMAC key.*")

PG_BIN = Path(os.environ.get("MESHRTC_PG_BIN", "/usr/lib/postgresql/15/bin"))
ROOM = "db-restart"
OUTAGE_S = 6.0


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free port, run as the `postgres` user when we are root
    (initdb refuses root)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="meshrtc-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(PG_BIN / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}")

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-o", options, "-w", "-t", "60",
                  "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def postgres_missing() -> str:
    if not (PG_BIN / "initdb").exists():
        return f"no PostgreSQL binaries in {PG_BIN} (set MESHRTC_PG_BIN)"
    if os.geteuid() == 0 and (shutil.which("runuser") is None or subprocess.run(
            ["id", "postgres"], capture_output=True).returncode != 0):
        return "running as root without runuser or a postgres user to run initdb as"
    return ""


class Deployment:
    """NATS and one process per service, configured as `meshrtc dev` would, but on PostgreSQL."""

    def __init__(self, database_url: str, webhook_url: str, logs: Path) -> None:
        self.nats = NatsServer().start()
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
                if httpx.get(self.http_url + "/", timeout=1).status_code == 200 and \
                        "started" in (self.logs / "media.log").read_text(errors="replace"):
                    return
            time.sleep(0.3)
        raise RuntimeError("deployment did not come up in 90 s")

    def check_alive(self) -> None:
        for service, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"{service} exited with {process.returncode}:\n"
                                     f"{(self.logs / f'{service}.log').read_text(errors='replace')[-3000:]}")

    def token(self, identity: str) -> str:
        return api.AccessToken(API_KEY, API_SECRET).with_identity(identity).with_grants(
            api.VideoGrants(room_join=True, room=ROOM)).to_jwt()

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
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.ids: list[str] = []
        self.verifier = api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET))

    async def handle(self, request: web.Request) -> web.Response:
        event = self.verifier.receive(await request.text(), request.headers.get("Authorization", ""))
        if event.room.name == ROOM:
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


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    if reason := postgres_missing():
        pytest.skip(reason)
    cluster = PrivatePostgres()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


async def stream_envelopes(nats_url: str, stream: str, subject: str) -> list[dict[str, object]]:
    import nats

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(subject, stream=stream)
        envelopes: list[dict[str, object]] = []
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


async def test_postgres_restarted_mid_call(postgres: PrivatePostgres, tmp_path: Path) -> None:
    hooks = WebhookLog()
    deployment = Deployment(postgres.url, hooks.url, tmp_path)
    speaker, viewer = rtc.Room(), rtc.Room()
    problems: list[str] = []
    for name, room in (("speaker", speaker), ("viewer", viewer)):
        for kind in ("reconnecting", "disconnected"):
            room.on(kind, lambda *_, name=name, kind=kind: problems.append(f"{name} {kind}"))
    frames: list[float] = []
    readers: list[asyncio.Task[None]] = []

    @viewer.on("track_subscribed")
    def on_track(track: rtc.Track, *_: object) -> None:
        async def read() -> None:
            async for _ in rtc.VideoStream(track):
                frames.append(time.monotonic())

        if isinstance(track, rtc.RemoteVideoTrack):
            readers.append(asyncio.ensure_future(read()))

    publisher = None
    async with hooks.running():
        try:
            await asyncio.to_thread(deployment.start)
            await viewer.connect(deployment.url, deployment.token("viewer"))
            await speaker.connect(deployment.url, deployment.token("speaker"))
            publisher = await publish_synthetic(speaker, 320, 180, audio=False, simulcast=False)
            assert await wait_for(lambda: len(frames) > 30, 30), "no video before the restart"
            await asyncio.sleep(6)  # usage samples and webhooks already in the database

            await asyncio.to_thread(postgres.stop)
            down_at = time.monotonic()
            late = rtc.Room()  # events, webhooks and usage while the database is down
            await late.connect(deployment.url, deployment.token("late"))
            await asyncio.sleep(OUTAGE_S / 2)
            await late.disconnect()
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
            frames_in_outage = sum(1 for t in frames if t > down_at)
            await asyncio.to_thread(postgres.start)
            back_ms = int(time.time() * 1000)
            print(f"PostgreSQL down {time.monotonic() - down_at:.1f}s; {frames_in_outage} video frames meanwhile")
            assert frames_in_outage > OUTAGE_S * 10, "video stalled with the database"
            await asyncio.sleep(6)

            again = rtc.Room()
            await again.connect(deployment.url, deployment.token("again"))
            await again.disconnect()
            deployment.check_alive()
            assert problems == [], problems
        finally:
            if publisher is not None:
                await publisher.stop()
            for room in (speaker, viewer):
                await room.disconnect()
            for reader in readers:
                reader.cancel()

        try:
            events: list[dict[str, object]] = []
            stored: list[tuple[object, ...]] = []

            async def events_settled() -> bool:
                nonlocal events, stored
                events = await stream_envelopes(deployment.nats.url, stream_name("events", "dc1"),
                                                room_events_filter("dc1", ROOM))
                stored = await asyncio.to_thread(sql, postgres.url, "SELECT id FROM events WHERE room = :room",
                                                 room=ROOM)
                left = sum(1 for e in events if e["type"] == "participant.left")
                return left == 4 and {e["id"] for e in events} == {row[0] for row in stored}

            deadline = time.monotonic() + 90
            while not await events_settled() and time.monotonic() < deadline:
                await asyncio.sleep(2)
            published_ids = [e["id"] for e in events]
            stored_ids = [row[0] for row in stored]
            late_rows = await asyncio.to_thread(
                sql, postgres.url, "SELECT ts, stored_at FROM events WHERE room = :room "
                "AND type = 'participant.joined' AND payload LIKE '%\"late\"%'", room=ROOM)
            assert late_rows and all(int(ts) < back_ms <= int(at) for ts, at in late_rows), \
                f"the join during the outage was not written after it: {late_rows} (back at {back_ms})"
            print(f"events: {len(published_ids)} published, {len(stored_ids)} stored; "
                  f"{Counter(str(e['type']) for e in events)}")
            assert len(set(published_ids)) == len(published_ids), "an event published twice"
            assert sorted(stored_ids) == sorted(published_ids), "events lost or doubled in the database"

            expected_hooks = {webhook_id(str(e["id"])) for e in events if e["type"] in WEBHOOK_SOURCE_TYPES}
            assert await wait_for(lambda: set(hooks.ids) >= expected_hooks, 60), \
                f"webhooks missing: {sorted(expected_hooks - set(hooks.ids))}"
            doubled = [i for i, n in Counter(hooks.ids).items() if n > 1]
            assert not doubled, f"webhooks delivered twice: {doubled}"
            delivered = await asyncio.to_thread(
                sql, postgres.url, "SELECT webhook_id FROM webhook_deliveries WHERE room = :room", room=ROOM)
            assert sorted(row[0] for row in delivered) == sorted(hooks.ids)

            counted: dict[tuple[str, str], int] = {}
            billed: dict[tuple[str, str], int] = {}

            async def usage_settled() -> bool:
                nonlocal counted, billed
                samples = await stream_envelopes(deployment.nats.url, stream_name("usage", "dc1"),
                                                 usage_subject("dc1", ROOM))
                totals: dict[tuple[str, str], int] = defaultdict(int)
                seen: set[str] = set()
                for env in samples:
                    payload = env["payload"]
                    assert isinstance(payload, dict)
                    if payload["track_sid"] or env["id"] in seen:
                        continue
                    seen.add(str(env["id"]))
                    totals[(payload["participant_sid"], payload["direction"])] += int(payload["bytes"])
                counted = dict(totals)
                rows = await asyncio.to_thread(
                    sql, postgres.url, "SELECT participant_sid, direction, SUM(bytes) FROM usage_rollups "
                    "WHERE room = :room GROUP BY participant_sid, direction", room=ROOM)
                billed = {(str(r[0]), str(r[1])): int(r[2]) for r in rows}  # type: ignore[call-overload]
                return bool(counted) and billed == counted

            deadline = time.monotonic() + 60
            while not await usage_settled() and time.monotonic() < deadline:
                await asyncio.sleep(2)
            print(f"usage: {sum(counted.values()):,d} bytes counted by media, {sum(billed.values()):,d} rolled up")
            assert billed == counted, "usage rollups differ from the media node's samples"
            deployment.check_alive()
        finally:
            deployment.stop()
