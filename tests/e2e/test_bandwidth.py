"""Downstream bandwidth adaptation over a real shaped link.

A Python SDK subscriber runs in its own network namespace, joined to the host by a veth pair;
the dev server listens on (and advertises) the host end. A publisher on the host sends a 1280x720
simulcast picture with enough detail to need well over 1 Mbps for the top layer. With the veth
limited to 600 kbps towards the subscriber (tc tbf, 100 ms queue), the subscriber must drop to a
lower layer within 5 s, with no gap over 1 s between decoded frames from the limit until the lower
layer has played 5 s; after 15 s the limit is lifted and it must be back on the top layer within
15 s. (While limited the estimator later probes upwards now and then; a failed probe costs a
keyframe wait, which is the price of finding out that a link has cleared.) The telemetry must
show the switches with their reasons. Needs root, ip and tc.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from livekit import api, rtc

from .conftest import API_KEY, API_SECRET, DevServer, start_dev_server, stop_dev_server
from .sdk_helpers import publish_synthetic_video

if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
    pytest.skip("needs root with ip and tc (network namespace + traffic shaping)", allow_module_level=True)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240), pytest.mark.filterwarnings("ignore:.*HMAC key.*")]

ROOM = "bandwidth"
LIMIT = "600kbit"
TOP = (1280, 720)


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=10)


@dataclass
class Link:
    namespace: str
    host_dev: str
    host_ip: str

    def limit(self) -> None:
        # Shape what the host sends into the namespace: the subscriber's downlink.
        sh("tc", "qdisc", "replace", "dev", self.host_dev, "root", "tbf", "rate", LIMIT, "burst", "16kb",
           "latency", "100ms")

    def lift(self) -> None:
        sh("tc", "qdisc", "del", "dev", self.host_dev, "root")


def _free_subnet() -> int:
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for third in range(os.getpid() % 200, os.getpid() % 200 + 50):
        if f"10.214.{third}." not in used:
            return third
    raise RuntimeError("no free 10.214.x.0/30 subnet")


@pytest.fixture(scope="module")
def link() -> Iterator[Link]:
    tag = f"{os.getpid() % 100000}"
    namespace, host_dev, ns_dev = f"mrtcbwe{tag}", f"mbwe{tag}h", f"mbwe{tag}n"
    third = _free_subnet()
    host_ip, ns_ip = f"10.214.{third}.1", f"10.214.{third}.2"
    sh("ip", "netns", "add", namespace)
    try:
        sh("ip", "link", "add", host_dev, "type", "veth", "peer", "name", ns_dev)
        sh("ip", "link", "set", ns_dev, "netns", namespace)
        sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_dev)
        sh("ip", "link", "set", host_dev, "up")
        sh("ip", "netns", "exec", namespace, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_dev)
        sh("ip", "netns", "exec", namespace, "ip", "link", "set", ns_dev, "up")
        sh("ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        yield Link(namespace, host_dev, host_ip)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            sh("ip", "link", "del", host_dev)
        with contextlib.suppress(subprocess.CalledProcessError):
            sh("ip", "netns", "del", namespace)


@pytest.fixture(scope="module")
def shaped_server(link: Link, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = start_dev_server(tmp_path_factory.mktemp("bwe"), "--bind", "0.0.0.0", "--advertise-ip", link.host_ip)
    try:
        yield server
    finally:
        stop_dev_server(server)


@dataclass
class Frames:
    """Decoded frames of the subscriber in the namespace: (monotonic time, width, height)."""

    seen: list[tuple[float, int, int]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def first(self, after: float, predicate: object) -> float | None:
        return next((t for t, w, h in self.seen if t >= after and predicate((w, h))), None)  # type: ignore[operator]

    def longest_gap(self, start: float, end: float) -> float:
        times = [t for t, _, _ in self.seen if start <= t <= end]
        edges = [start, *times, min(end, time.monotonic())]
        return max(b - a for a, b in itertools.pairwise(edges))

    def timeline(self, origin: float) -> str:
        out, last, size = [], None, None
        for t, w, h in self.seen:
            if last is not None and (t - last > 0.3 or (w, h) != size):
                out.append(f"{last - origin:+.2f} .. {t - origin:+.2f}  {size} -> {(w, h)}")
            last, size = t, (w, h)
        return "\n".join(out)

    def size_now(self) -> tuple[int, int] | None:
        return (self.seen[-1][1], self.seen[-1][2]) if self.seen else None


async def read_frames(process: asyncio.subprocess.Process, frames: Frames) -> None:
    assert process.stdout is not None
    while line := (await process.stdout.readline()).decode().strip():
        if line.startswith("F "):
            _, t, w, h = line.split()
            frames.seen.append((float(t), int(w), int(h)))
        else:
            frames.lines.append(line)


async def room_stats(server: DevServer, window: int) -> dict[str, Any]:
    token = api.AccessToken(API_KEY, API_SECRET).with_identity("ops") \
        .with_grants(api.VideoGrants(room_list=True)).to_jwt()
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{server.http_url}/stats/rooms/{ROOM}", params={"window": str(window)},
                                    headers={"Authorization": f"Bearer {token}"}, timeout=10)
    return response.json()  # type: ignore[no-any-return]


async def wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.1)
    return bool(predicate())  # type: ignore[operator]


async def test_subscriber_on_a_600_kbps_link_drops_a_layer_and_recovers(link: Link,
                                                                         shaped_server: DevServer) -> None:
    server = shaped_server
    url = f"ws://{link.host_ip}:{server.url.rsplit(':', 1)[1]}"
    publisher_room = rtc.Room()
    frames = Frames()
    proc_script = Path(__file__).parent / "bwe_subscriber_proc.py"
    subscriber = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", link.namespace, sys.executable, str(proc_script), url,
        server.token("viewer", ROOM), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    reader = asyncio.ensure_future(read_frames(subscriber, frames))
    video = None
    limited_at = time.monotonic()
    try:
        await publisher_room.connect(url, server.token("camera", ROOM))
        video = await publish_synthetic_video(publisher_room, *TOP)
        assert await wait_until(lambda: frames.size_now() == TOP, 40), \
            f"subscriber never reached the top layer: {frames.size_now()} {frames.lines[-5:]}"
        await asyncio.sleep(3)
        assert frames.size_now() == TOP

        limited_at, limited_wall = time.monotonic(), time.time()
        link.limit()
        assert await wait_until(lambda: frames.first(limited_at, lambda s: s[0] < TOP[0]) is not None, 8)
        dropped_at = frames.first(limited_at, lambda s: s[0] < TOP[0])
        assert dropped_at is not None
        await asyncio.sleep(max(0.0, limited_at + 15 - time.monotonic()))
        # the drop: from the limit until the lower layer has played for a while (later probes of
        # the link are the estimator's business, not the drop's)
        gap = frames.longest_gap(limited_at, dropped_at + 5)
        print(f"\n[bwe] limited at {time.strftime('%H:%M:%S', time.localtime(limited_wall))}"
              f".{int(limited_wall * 1000) % 1000:03d} (server log time): "
              f"lower layer after {dropped_at - limited_at:.2f}s, longest freeze {gap:.2f}s, "
              f"size now {frames.size_now()}\n" + frames.timeline(limited_at))
        assert dropped_at - limited_at <= 5.0, f"took {dropped_at - limited_at:.1f}s to drop a layer"
        assert gap <= 1.0, f"video froze for {gap:.2f}s on the limited link"

        lifted_at = time.monotonic()
        link.lift()
        assert await wait_until(lambda: frames.first(lifted_at, lambda s: s == TOP) is not None, 20)
        back_at = frames.first(lifted_at, lambda s: s == TOP)
        assert back_at is not None
        print(f"[bwe] lifted: top layer again after {back_at - lifted_at:.2f}s")
        assert back_at - lifted_at <= 15.0, f"took {back_at - lifted_at:.1f}s to return to the top layer"

        await asyncio.sleep(6)  # the last switches reach SQL
        doc = await room_stats(server, 120)
        reasons = {s["reason"] for s in doc["switches"] if s["identity"] == "viewer"}
        assert {"congestion", "recovered"} <= reasons, doc["switches"]
    except BaseException:
        print("--- frames (s after the limit, size; gaps over 0.3 s) ---\n" + frames.timeline(limited_at))
        print("--- bandwidth decisions ---\n" + "\n".join(
            line for line in server.log().splitlines() if "bandwidth cap" in line or "dynacast" in line))
        with contextlib.suppress(Exception):
            print("--- telemetry ---\n" + json.dumps(await room_stats(server, 60), indent=1)[:6000])
        raise
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            link.lift()
        if video is not None and video.task is not None:
            video.task.cancel()
        subscriber.kill()
        await subscriber.wait()
        reader.cancel()
        await publisher_room.disconnect()
