"""A TCP front for several signal instances, as a load balancer with failover would be: each
new connection goes to the first backend that accepts it. Test infrastructure for resume."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shared.natsserver import _set_parent_death_signal, free_port


class TcpFront:
    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = 0
        self.routed: list[int] = []  # backend port of each accepted connection
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self.backends:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self.routed.append(port)
            for source, sink in ((reader, up_writer), (up_reader, writer)):
                task = asyncio.ensure_future(self._pipe(source, sink))
                self._pipes.add(task)
                task.add_done_callback(self._pipes.discard)
            return
        writer.close()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                sink.close()

    def cut(self) -> None:
        """Every connection drops and new ones are refused (the clients' network is gone)."""
        self.backends = []
        for task in list(self._pipes):
            task.cancel()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()


def service_env(pid: int) -> dict[str, str]:
    """The environment a running service was started with (its MESHRTC_* configuration)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def start_second_signal(template_pid: int, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Another `meshrtc serve signal` configured like the running one, on a port of its own."""
    port = free_port()
    env = {**service_env(template_pid), "MESHRTC_HTTP_PORT": str(port), "MESHRTC_NODE_ID": "signal-dc1-b",
           "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "wb")
    process = subprocess.Popen([sys.executable, "-m", "meshrtc", "serve", "signal"], env={**os.environ, **env},
                               stdout=log, stderr=subprocess.STDOUT, preexec_fn=_set_parent_death_signal)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"second signal exited: {log_path.read_text(errors='replace')}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return process, port
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("second signal did not come up in 60 s")
