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
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit import rtc

from shared.natsserver import free_port

from .accounting import Deployment, WebhookLog, check_participants, check_usage, check_webhooks, settled_events, sql
from .sdk_helpers import Received, count_media, publish_synthetic, record_connection_events, wait_for

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


async def test_postgres_restarted_mid_call(postgres: PrivatePostgres, tmp_path: Path) -> None:
    hooks = WebhookLog(ROOM)
    deployment = Deployment(postgres.url, hooks.url, tmp_path, ROOM)
    speaker, viewer = rtc.Room(), rtc.Room()
    connection_events = record_connection_events({"speaker": speaker, "viewer": viewer})
    received = Received()
    count_media(viewer, received)
    frames = received.video_times

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
            assert not any(connection_events.values()), connection_events
        finally:
            if publisher is not None:
                await publisher.stop()
            for room in (speaker, viewer):
                await room.disconnect()
            for task in received.tasks:
                task.cancel()

        try:
            events = await settled_events(deployment, left=4)
            late_rows = await asyncio.to_thread(
                sql, postgres.url, "SELECT ts, stored_at FROM events WHERE room = :room "
                "AND type = 'participant.joined' AND payload LIKE '%\"late\"%'", room=ROOM)
            assert late_rows and all(int(ts) < back_ms <= int(at) for ts, at in late_rows), \
                f"the join during the outage was not written after it: {late_rows} (back at {back_ms})"
            check_participants(events, ["viewer", "speaker", "late", "again"])
            await check_webhooks(hooks, events, postgres.url)
            await check_usage(deployment)
            deployment.check_alive()
        finally:
            deployment.stop()
