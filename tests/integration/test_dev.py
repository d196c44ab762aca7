"""`meshrtc dev` end to end: it answers HTTP quickly, every service beats on the bus, and
stopping it leaves no process behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import nats
import pytest

from shared.events import Envelope, NodeHeartbeat
from shared.natsserver import free_port

SERVICES = {"signal", "media", "relay", "room", "billing"}


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    stack = [pid]
    while stack:
        current = stack.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def start_dev(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "meshrtc", "dev", "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


banner_text: dict[str, str] = {}


def read_banner(proc: subprocess.Popen[str], timeout: float = 15) -> dict[str, str]:
    """Reads the banner lines in a thread, so a silent process cannot block the test."""
    banner: dict[str, str] = {}
    assert proc.stdout is not None
    stream = proc.stdout
    banner_text["all"] = ""

    def reader() -> None:
        for line in stream:
            banner_text["all"] += line
            match = re.match(r"^\s+(URL|API key|API secret|NATS):\s+(\S+)", line)
            if match:
                banner[match.group(1)] = match.group(2)

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and "metrics:" not in banner_text["all"]:
        time.sleep(0.05)
    return banner


async def heartbeating_services(nats_url: str, seconds: float) -> set[str]:
    seen: set[str] = set()
    nc = await nats.connect(nats_url)

    async def on_beat(msg: nats.aio.msg.Msg) -> None:
        env = Envelope.from_json(msg.data)
        assert isinstance(env.payload, NodeHeartbeat)
        seen.add(env.payload.service)

    await nc.subscribe("heartbeat.dc1.*", cb=on_beat)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and seen != SERVICES:
        await asyncio.sleep(0.1)
    await nc.close()
    return seen


@pytest.mark.timeout(90)
def test_dev_serves_beats_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    proc = start_dev(tmp_path, port)
    try:
        banner = read_banner(proc)
        assert banner.get("API key") == "devkey" and banner.get("API secret") == "secret"
        assert banner.get("URL") == f"ws://127.0.0.1:{port}"
        answered = False
        while time.monotonic() - started < 15 and not answered:
            try:
                answered = httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.2)
        assert answered, "GET / did not answer within 15 s"
        assert asyncio.run(heartbeating_services(banner["NATS"], 20)) == SERVICES
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'meshrtc_sessions{node="signal-dc1",service="signal"}' in scraped
        assert "meshrtc_event_loop_lag_seconds" in scraped
        media_metrics = re.search(r"media-dc1-1=(\S+)", banner_text["all"])
        assert media_metrics, banner_text["all"]
        media = httpx.get(media_metrics.group(1), timeout=5).text
        assert 'meshrtc_participants{node="media-dc1-1",service="media"} 0.0' in media
        assert "meshrtc_packets_forwarded_total" in media
        family = descendants(proc.pid)
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in family if alive(pid)}
        assert "nats-server" in names
        assert len(family) >= 6  # nats-server + five services
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in family):
        time.sleep(0.1)
    assert not [pid for pid in family if alive(pid)], "processes left behind after stopping meshrtc dev"


@pytest.mark.timeout(60)
def test_dev_killed_outright_leaves_no_orphans(tmp_path: Path) -> None:
    proc = start_dev(tmp_path, free_port())
    try:
        assert "NATS" in read_banner(proc)
        time.sleep(1.0)
        family = descendants(proc.pid)
        assert family
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(pid) for pid in family):
        time.sleep(0.1)
    assert not [pid for pid in family if alive(pid)]
