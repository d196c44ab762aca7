"""A failover lab for tests: `with running_lab(tmp_path, datacenters=3) as lab: ...`.

Each lab gets its own name (`mt<pid>n<k>`), a free address slot, and a state directory under
/run/meshrtc-lab/tests/, so test labs never collide with an operator's lab or with each other.
Teardown is guaranteed three ways: the `with` block's `finally`, an atexit hook (interpreter exit
without leaving the block), and at the next start, stale labs whose pytest process is gone
(killed outright) are removed before a new one is made.

    with running_lab(tmp_path, datacenters=3) as lab:
        lab.url("dc1")                       # ws://<mgmt ip>:7880, reachable from the test process
        lab.run_in("dc2", [sys.executable, "client.py", lab.url("dc2")])   # a client inside dc2
        lab.cut("dc1", "dc2"); lab.heal("dc1", "dc2")
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshrtc.commands.dev import DEV_KEY, DEV_SECRET
from meshrtc.lab import links, netns, runner
from meshrtc.lab.probe import PingResult
from meshrtc.lab.state import DEFAULT_STATE_DIR, Emulator, LabState, StateDir
from meshrtc.lab.topology import LabPlan

TEST_LABS_DIR = DEFAULT_STATE_DIR / "tests"
_NAME = re.compile(r"mt(\d+)n\d+")
_counter = itertools.count(1)


def lab_unavailable_reason() -> str | None:
    """Why a lab cannot be made here (None: it can). For `pytest.mark.skipif`."""
    if os.geteuid() != 0:
        return "the failover lab needs root"
    if shutil.which("ip") is None:
        return "the failover lab needs iproute2 (`ip`)"
    if not Path("/dev/net/tun").exists() and not netns.netem_available():
        return "the failover lab needs /dev/net/tun or the kernel's sch_netem"
    return None


@dataclass
class RunningLab:
    plan: LabPlan
    state: LabState
    state_dir: StateDir
    api_key: str = DEV_KEY
    api_secret: str = DEV_SECRET

    @property
    def datacenters(self) -> tuple[str, ...]:
        return self.plan.datacenters

    def url(self, dc: str) -> str:
        return self.plan.url(dc)

    def http_url(self, dc: str) -> str:
        return self.plan.url(dc).replace("ws://", "http://", 1)

    def token(self, identity: str, room: str, **grants: object) -> str:
        """An access token every DC of the lab accepts (they share the dev API key)."""
        from livekit import api

        video = api.VideoGrants(room_join=True, room=room, **grants)  # type: ignore[arg-type]
        return api.AccessToken(self.api_key, self.api_secret).with_identity(identity).with_name(identity) \
            .with_grants(video).to_jwt()

    def mgmt_ip(self, dc: str) -> str:
        return self.plan.mgmt(dc).dc_end.ip

    def namespace(self, dc: str) -> str:
        return self.plan.namespace(dc)

    def nats_url(self, dc: str) -> str:
        return self.plan.nats_url(dc)

    def link_ip(self, dc: str, peer: str) -> str:
        """`dc`'s address on its direct link to `peer`."""
        return self.plan.link(dc, peer).end_in(dc).ip

    def log_path(self, dc: str) -> Path:
        return self.state_dir.log_file(dc)

    def cut(self, a: str, b: str) -> None:
        links.cut(self.plan, a, b)

    def heal(self, a: str, b: str) -> None:
        links.heal(self.plan, a, b)

    def partition(self, dc: str) -> None:
        links.partition(self.plan, dc)

    def unpartition(self, dc: str) -> None:
        links.heal_all(self.plan, dc)

    def degrade(self, a: str, b: str, *, loss_percent: float | None = None, delay_ms: int | None = None) -> None:
        links.degrade(self.plan, self.state, self.state_dir, a, b, loss_percent=loss_percent, delay_ms=delay_ms)

    def run_in(self, dc: str, argv: list[str], *, timeout: float = 60.0, env: Mapping[str, str] | None = None,
               **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside `dc`'s namespace (e.g. a Python SDK client) and wait for it."""
        return subprocess.run(netns.exec_argv(self.namespace(dc), argv), capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})}, **kwargs)

    def popen_in(self, dc: str, argv: list[str], *, env: Mapping[str, str] | None = None,
                 **kwargs: Any) -> subprocess.Popen[str]:
        """Start `argv` inside `dc`'s namespace; the caller waits for it (or kills it)."""
        return subprocess.Popen(netns.exec_argv(self.namespace(dc), argv), text=True,
                                env={**os.environ, **(env or {})}, **kwargs)

    def ping_ip(self, dc: str, ip: str, *, count: int = 5, interval: float = 0.2,
                timeout: float = 2.0) -> PingResult:
        done = self.run_in(dc, [sys.executable, "-m", "meshrtc.lab.probe", ip, "--count", str(count),
                                "--interval", str(interval), "--timeout", str(timeout)],
                           timeout=count * interval + timeout + 30)
        if not done.stdout.strip():
            raise RuntimeError(f"probe in {dc} failed: {done.stderr.strip()}")
        return PingResult(**json.loads(done.stdout))

    def ping(self, a: str, b: str, **kwargs: Any) -> PingResult:
        """ICMP from `a` to `b`'s end of their direct link."""
        return self.ping_ip(a, self.link_ip(b, a), **kwargs)

    def log_tail(self, dc: str, lines: int = 40) -> str:
        return runner.log_tail(self.state_dir, dc, lines)


def remove_stale_labs() -> None:
    """Labs left by a test process that no longer runs (killed before its teardown)."""
    if not TEST_LABS_DIR.exists():
        return
    for path in TEST_LABS_DIR.iterdir():
        match = _NAME.fullmatch(path.name)
        if match and not netns.pid_alive(int(match.group(1))):
            runner.down(StateDir(path), None, name=path.name)
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def running_lab(
    tmp_path: Path,
    datacenters: int = 3,
    *,
    services: bool = True,
    delays_ms: dict[tuple[str, str], int] | None = None,
    emulator: Emulator | None = None,
    media_nodes: int = 1,
    ready_timeout: float = 240.0,
) -> Iterator[RunningLab]:
    """A lab that exists only inside the `with` block. Its DC logs are copied to
    `tmp_path/lab-logs/` when it is torn down, so a failed test can be read afterwards."""
    remove_stale_labs()
    name = f"mt{os.getpid()}n{next(_counter)}"
    state_dir = StateDir(TEST_LABS_DIR / name)
    chosen: Emulator = emulator or ("netem" if netns.netem_available() else "wire")

    def teardown() -> None:
        if state_dir.path.exists():
            _keep_logs(state_dir, tmp_path / "lab-logs")
        runner.down(state_dir, None, name=name)

    atexit.register(teardown)
    try:
        plan, state = runner.up(state_dir, datacenters, name=name, slot=None, delays_ms=delays_ms or {},
                                emulator=chosen, services=services, media_nodes=media_nodes,
                                ready_timeout=ready_timeout, say=lambda _: None)
        yield RunningLab(plan, state, state_dir)
    finally:
        teardown()
        atexit.unregister(teardown)


def _keep_logs(state_dir: StateDir, target: Path) -> None:
    for log in [*state_dir.path.glob("dc*/dev.log"), state_dir.path / "wire.log"]:
        if log.exists():
            destination = target / log.relative_to(state_dir.path)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, destination)
