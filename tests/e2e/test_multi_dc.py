"""Rooms across datacenters, in the failover lab: three DCs in network namespaces joined by
emulated links (30/20/20 ms), a full meshrtc DC in each, LiveKit SDK clients run inside the DC
namespaces and connected to their own DC's URL.

Clients are separate processes (tests/support/lab_client.py) that write what they saw with
wall-clock times; the test lines those up with the cuts and heals it makes."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from shared.relay_control import RelayStats, RelayStatsRequest, relay_stats_subject
from tests.support.lab import RunningLab, lab_unavailable_reason, running_lab

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900),
              pytest.mark.skipif(lab_unavailable_reason() is not None, reason=lab_unavailable_reason() or "")]

CLIENT = Path(__file__).resolve().parent.parent / "support" / "lab_client.py"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    with running_lab(tmp_path_factory.mktemp("multidc"), datacenters=3) as running:
        yield running


class Client:
    def __init__(self, lab: RunningLab, dc: str, identity: str, room: str, out: Path, duration: float,
                 publish: bool = False, watch: bool = False, size: str = "640x360") -> None:
        self.out = out
        argv = [sys.executable, str(CLIENT), lab.url(dc), lab.token(identity, room), "--duration", str(duration),
                "--out", str(out), "--size", size]
        argv += ["--publish"] if publish else []
        argv += ["--watch"] if watch else []
        self.log = out.with_suffix(".log")
        self.process = lab.popen_in(dc, argv, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)

    def result(self, timeout: float = 60) -> dict:
        try:
            self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        assert self.out.exists(), f"client wrote no report:\n{self.log.read_text()[-3000:]}"
        return json.loads(self.out.read_text())


async def relay_stats(lab: RunningLab, dc: str) -> RelayStats:
    nc = await nats.connect(lab.nats_url(dc), connect_timeout=5, allow_reconnect=False)
    try:
        reply = await nc.request(relay_stats_subject(dc), RelayStatsRequest().encode(), timeout=5)
        return RelayStats.decode(reply.data)
    finally:
        await nc.close()


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest time without a frame in [start, end] (window edges count)."""
    inside = [t for t in times if start <= t <= end]
    points = [start, *inside, end]
    return max(b - a for a, b in itertools.pairwise(points))


async def test_participants_in_two_dcs_see_each_other_within_a_second(lab: RunningLab, tmp_path: Path) -> None:
    room = "two-dcs"
    a = Client(lab, "dc1", "alice", room, tmp_path / "a.json", 20, publish=True, watch=True)
    b = Client(lab, "dc2", "bob", room, tmp_path / "b.json", 20, publish=True, watch=True)
    ra, rb = a.result(120), b.result(120)
    seen_by_b = rb["subscribed"].get("alice/video")
    seen_by_a = ra["subscribed"].get("bob/video")
    assert seen_by_b and seen_by_a, f"alice saw {ra['subscribed']}, bob saw {rb['subscribed']}"
    # The later of "published" and "the other one joined" starts the clock: a track cannot be
    # seen before its subscriber is in the room.
    delay_b = seen_by_b - max(ra["published_at"], rb["connected_at"])
    delay_a = seen_by_a - max(rb["published_at"], ra["connected_at"])
    print(f"\ndc1 -> dc2 track seen after {delay_b:.2f}s, dc2 -> dc1 after {delay_a:.2f}s; "
          f"frames at bob {len(rb['frames'].get('alice', []))}, at alice {len(ra['frames'].get('bob', []))}")
    assert delay_b < 1.0 and delay_a < 1.0
    assert len(rb["frames"].get("alice", [])) > 100 and len(ra["frames"].get("bob", [])) > 100
    assert rb["audio_frames"].get("alice", 0) > 200 and ra["audio_frames"].get("bob", 0) > 200


async def test_cut_reroutes_through_the_third_dc_and_heal_returns(lab: RunningLab, tmp_path: Path) -> None:
    room, cycles, hold = "reroute", 10, 4.0
    duration = 10 + cycles * 2 * hold + 4
    a = Client(lab, "dc1", "alice", room, tmp_path / "a.json", duration, publish=True)
    b = Client(lab, "dc2", "bob", room, tmp_path / "b.json", duration, watch=True)
    await asyncio.sleep(10)
    events: list[tuple[str, float]] = []
    routes: list[list[str]] = []
    for cycle in range(cycles):
        events.append(("cut", time.time()))
        lab.cut("dc1", "dc2")
        await asyncio.sleep(hold)
        if cycle == 0:
            routes.append((await relay_stats(lab, "dc1")).paths.get("dc2", []))
        events.append(("heal", time.time()))
        lab.heal("dc1", "dc2")
        await asyncio.sleep(hold)
        if cycle == 0:
            routes.append((await relay_stats(lab, "dc1")).paths.get("dc2", []))
    a.result(120)
    frames = b.result(120)["frames"].get("alice", [])
    assert frames, "bob received no video"
    quiet = longest_gap(frames, events[0][1] - 5, events[0][1])
    cut_gaps = [longest_gap(frames, t, t + hold) for kind, t in events if kind == "cut"]
    heal_gaps = [longest_gap(frames, t, t + hold) for kind, t in events if kind == "heal"]

    def summary(gaps: list[float]) -> str:
        return f"min {min(gaps) * 1000:.0f} / median {statistics.median(gaps) * 1000:.0f} / " \
               f"max {max(gaps) * 1000:.0f} ms"

    print(f"\nroute dc1->dc2 while cut {routes[0]}, after heal {routes[1]}; longest frame gap over {cycles} "
          f"cuts: {summary(cut_gaps)}; after heals: {summary(heal_gaps)}; before any cut: {quiet * 1000:.0f} ms")
    assert routes[0] == ["dc1", "dc3", "dc2"] and routes[1] == ["dc1", "dc2"]
    assert max(cut_gaps) < 1.0
    assert max(heal_gaps) < 0.2
