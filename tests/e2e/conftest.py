"""A running `meshrtc dev` for end-to-end tests with LiveKit's own SDKs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.contracts.control import NodeStats
from shared.natsserver import _set_parent_death_signal, free_port

API_KEY, API_SECRET = "devkey", "secret"


@dataclass
class DevServer:
    url: str
    http_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def token(self, identity: str, room: str, **grants: object) -> str:
        from livekit import api

        video = api.VideoGrants(room_join=True, room=room, **grants)  # type: ignore[arg-type]
        return api.AccessToken(API_KEY, API_SECRET).with_identity(identity).with_name(identity) \
            .with_grants(video).to_jwt()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def nats_url(self) -> str:
        match = re.search(r"NATS:\s+(\S+)", self.log())
        assert match, "no NATS URL in the dev banner"
        return match.group(1)

    async def node_stats(self, node: str = "media-dc1-1") -> NodeStats:
        import nats

        nc = await nats.connect(self.nats_url)
        try:
            reply = await nc.request(f"ctl.media.{node}.stats", b"", timeout=5)
            return NodeStats.decode(reply.data)
        finally:
            await nc.close()


def start_dev_server(tmp: Path, *extra: str, env: dict[str, str] | None = None) -> DevServer:
    port = free_port()
    log_path = tmp / "dev.log"
    log_file = open(log_path, "wb")
    process = subprocess.Popen([sys.executable, "-m", "meshrtc", "dev", "--port", str(port), *extra],
                               stdout=log_file, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, cwd=tmp,
                               preexec_fn=_set_parent_death_signal)  # an aborted run leaves no server
    server = DevServer(f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 90  # generous: CI machines are small and busy
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"meshrtc dev exited early:\n{server.log()}")
        try:
            if httpx.get(server.http_url + "/", timeout=1).status_code == 200 and \
                    re.search(r"media media-\S+ started", server.log()):
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        stop_dev_server(server)
        raise RuntimeError(f"meshrtc dev did not come up in 90 s:\n{server.log()[-3000:]}")
    time.sleep(1.5)  # first heartbeat of the media node reaches the room service
    return server


def stop_dev_server(server: DevServer) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = start_dev_server(tmp_path_factory.mktemp("dev"))
    try:
        yield server
    finally:
        stop_dev_server(server)
