"""Rooms across datacenters, in the failover lab: three DCs in network namespaces joined by
emulated links (30/20/20 ms), a full meshrtc DC in each, LiveKit SDK clients run inside the DC
namespaces and connected to their own DC's URL.

Clients are separate processes (tests/support/lab_client.py) that write what they saw with
wall-clock times; the test lines those up with the cuts and heals it makes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from shared.contracts.control import NodeStats
from shared.contracts.relay import RelayStats, RelayStatsRequest, relay_stats_subject
from shared.replication import events_stream, replica_stream
from tests.support.lab import RunningLab, lab_unavailable_reason, running_lab

from .sdk_helpers import longest_gap

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900),
              pytest.mark.skipif(lab_unavailable_reason() is not None, reason=lab_unavailable_reason() or "")]

CLIENT = Path(__file__).resolve().parent.parent / "support" / "lab_client.py"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    with running_lab(tmp_path_factory.mktemp("multidc"), datacenters=3) as running:
        time.sleep(5)  # "ready" = every DC answers; its 18 processes are still finishing their start
        yield running


class Client:
    """One lab_client.py process inside a DC: one participant, or several (`identities`)."""

    def __init__(self, lab: RunningLab, dc: str, identity: str | list[str], room: str, out: Path, duration: float,
                 publish: bool = False, watch: bool = False, size: str = "640x360") -> None:
        self.out = out
        identities = [identity] if isinstance(identity, str) else identity
        self.identity = identities[0]
        argv = [sys.executable, str(CLIENT), lab.url(dc), *(lab.token(i, room) for i in identities),
                "--duration", str(duration), "--out", str(out), "--size", size]
        argv += ["--publish"] if publish else []
        argv += ["--watch"] if watch else []
        self.log = out.with_suffix(".log")
        self.process = lab.popen_in(dc, argv, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)

    def events(self, event: str) -> list[dict]:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return [e for e in (json.loads(line) for line in lines if line.startswith("{")) if e.get("event") == event]

    async def wait_for(self, event: str, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events(event)) < count:
            assert time.monotonic() < deadline, f"{count} x {event} not seen:\n{self.log.read_text()[-2000:]}"
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def results(self, timeout: float = 60) -> dict[str, dict]:
        try:
            self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        assert self.out.exists(), f"client wrote no report:\n{self.log.read_text()[-3000:]}"
        return json.loads(self.out.read_text())["participants"]

    def result(self, timeout: float = 60) -> dict:
        return self.results(timeout)[self.identity]


async def relay_stats(lab: RunningLab, dc: str, reset_worst_lag: bool = False) -> RelayStats:
    nc = await nats.connect(lab.nats_url(dc), connect_timeout=5, allow_reconnect=False)
    try:
        reply = await nc.request(relay_stats_subject(dc), RelayStatsRequest(reset_worst_lag=reset_worst_lag).encode(),
                                 timeout=5)
        return RelayStats.decode(reply.data)
    finally:
        await nc.close()


async def node_stats(lab: RunningLab, dc: str, node: str) -> NodeStats:
    nc = await nats.connect(lab.nats_url(dc), connect_timeout=5, allow_reconnect=False)
    try:
        return NodeStats.decode((await nc.request(f"ctl.media.{node}.stats", b"", timeout=5)).data)
    finally:
        await nc.close()


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
    room, cycles, hold = "reroute", int(os.environ.get("MESHRTC_LAB_CYCLES", "10")), 4.0
    warmup = 16.0
    duration = warmup + cycles * 2 * hold + 4
    a = Client(lab, "dc1", "alice", room, tmp_path / "a.json", duration, publish=True)
    b = Client(lab, "dc2", "bob", room, tmp_path / "b.json", duration, watch=True)
    await asyncio.sleep(warmup)
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
    seen = b.result(120)
    frames = seen["frames"].get("alice", [])
    audio = seen["audio_times"].get("alice", [])
    assert frames, "bob received no video"
    audio_cut_gaps = [longest_gap(audio, t, t + hold) for kind, t in events if kind == "cut"]
    audio_heal_gaps = [longest_gap(audio, t, t + hold) for kind, t in events if kind == "heal"]
    # The machine's own frame jitter, with nothing happening to the network: a busy 2-core
    # machine running three DCs and both clients delays frames by itself.
    quiet = longest_gap(frames, events[0][1] - 8, events[0][1])
    cut_gaps = [longest_gap(frames, t, t + hold) for kind, t in events if kind == "cut"]
    heal_gaps = [longest_gap(frames, t, t + hold) for kind, t in events if kind == "heal"]

    def summary(gaps: list[float]) -> str:
        return f"min {min(gaps) * 1000:.0f} / median {statistics.median(gaps) * 1000:.0f} / " \
               f"max {max(gaps) * 1000:.0f} ms"

    print(f"\nroute dc1->dc2 while cut {routes[0]}, after heal {routes[1]}; longest frame gap over {cycles} "
          f"cuts: {summary(cut_gaps)}; after heals: {summary(heal_gaps)}; before any cut: {quiet * 1000:.0f} ms; "
          f"audio gaps over the cuts: {summary(audio_cut_gaps)}, over the heals: {summary(audio_heal_gaps)}")
    assert routes[0] == ["dc1", "dc3", "dc2"] and routes[1] == ["dc1", "dc2"]
    assert max(cut_gaps) < 1.0
    assert max(heal_gaps) < max(0.2, 1.5 * quiet), "the return to the direct path interrupted the video"


async def test_one_copy_crosses_the_link_for_ten_subscribers(lab: RunningLab, tmp_path: Path) -> None:
    room = "one-copy"
    publisher = Client(lab, "dc1", "speaker", room, tmp_path / "pub.json", 300, publish=True, size="320x180")
    viewers = Client(lab, "dc2", [f"viewer{i}" for i in range(10)], room, tmp_path / "viewers.json", 300,
                     watch=True)
    try:
        await publisher.wait_for("published", 1, 120)
        await viewers.wait_for("subscribed", 20, 180)  # ten viewers, video and audio each
        await asyncio.sleep(3)
        link_before = (await relay_stats(lab, "dc1")).peer_counters["dc2"]["data_packets_out"]
        exported_before = (await node_stats(lab, "dc1", "media-dc1-1")).relay["relay_packets_out"]
        await asyncio.sleep(5)
        link_after = (await relay_stats(lab, "dc1")).peer_counters["dc2"]["data_packets_out"]
        exported_after = (await node_stats(lab, "dc1", "media-dc1-1")).relay["relay_packets_out"]
    finally:
        viewers.stop()
        publisher.stop()
    seen = viewers.results(120)
    publisher.results(120)
    crossed, exported = link_after - link_before, exported_after - exported_before
    frames = [len(report["frames"].get("speaker", [])) for report in seen.values()]
    print(f"\nin 5 s: the publisher's node handed dc1's relay {exported} packets, the dc1 -> dc2 link carried "
          f"{crossed}; viewers' frames {frames}")
    assert len(frames) == 10 and all(f > 50 for f in frames), frames
    assert exported > 0
    # one copy per link: what crosses is what the publisher's node sent, not ten times it
    assert 0.8 * exported < crossed < 1.2 * exported + 20


async def ids_by_origin(lab: RunningLab, dc: str, stream: str) -> dict[str, list[str]]:
    """Every message id of a stream, grouped by the DC whose subject prefix it carries, in order."""
    nc = await nats.connect(lab.nats_url(dc), connect_timeout=5, allow_reconnect=False)
    out: dict[str, list[str]] = {}
    try:
        js = nc.jetstream()
        total = (await js.stream_info(stream)).state.messages
        sub = await js.subscribe("events.>", stream=stream, ordered_consumer=True)
        for _ in range(total):
            msg = await sub.next_msg(timeout=10)
            out.setdefault(msg.subject.split(".")[1], []).append((msg.headers or {}).get("Nats-Msg-Id", ""))
        await sub.unsubscribe()
    finally:
        await nc.close()
    return out


async def test_partitioned_dc_keeps_working_alone_and_catches_up_exactly_once(lab: RunningLab,
                                                                              tmp_path: Path) -> None:
    lab.partition("dc2")
    try:
        await asyncio.sleep(6)  # every link's probes and NATS pings notice
        clients = {
            "alice@dc1": Client(lab, "dc1", "alice", "part-across", tmp_path / "a.json", 15, publish=True,
                                watch=True, size="320x180"),
            "carol@dc3": Client(lab, "dc3", "carol", "part-across", tmp_path / "c.json", 15, publish=True,
                                watch=True, size="320x180"),
            "bob@dc2": Client(lab, "dc2", "bob", "part-local", tmp_path / "b.json", 15, publish=True, watch=True,
                              size="320x180"),
            "dave@dc2": Client(lab, "dc2", "dave", "part-local", tmp_path / "d.json", 15, publish=True, watch=True,
                               size="320x180"),
        }
        seen = {name: client.result(120) for name, client in clients.items()}
    finally:
        lab.unpartition("dc2")
    frames = {name: {who: len(times) for who, times in report["frames"].items()} for name, report in seen.items()}
    print(f"\nduring the partition of dc2, frames received: {frames}")
    assert frames["alice@dc1"].get("carol", 0) > 100 and frames["carol@dc3"].get("alice", 0) > 100
    assert frames["bob@dc2"].get("dave", 0) > 100 and frames["dave@dc2"].get("bob", 0) > 100

    # After the heal every replica holds every DC's events, each once, in each origin's order.
    healed_at = time.monotonic()
    origins: dict[str, list[str]] = {}
    replicas: dict[str, dict[str, list[str]]] = {}
    converged = False
    while time.monotonic() - healed_at < 60 and not converged:
        await asyncio.sleep(2)
        origins = {dc: (await ids_by_origin(lab, dc, events_stream(dc))).get(dc, []) for dc in lab.datacenters}
        replicas = {dc: await ids_by_origin(lab, dc, replica_stream(dc)) for dc in lab.datacenters}
        converged = all(replicas[r].get(o, [])[:len(origins[o])] == origins[o]
                        for r in lab.datacenters for o in lab.datacenters)
    caught_up = time.monotonic() - healed_at
    sizes = {r: {o: len(ids) for o, ids in replicas[r].items()} for r in replicas}
    print(f"replicas after the heal ({caught_up:.1f}s): {sizes}; origins: "
          f"{ {dc: len(ids) for dc, ids in origins.items()} }")
    assert converged, "a replica is missing events after the heal"
    for r, by_origin in replicas.items():
        for o, ids in by_origin.items():
            assert len(ids) == len(set(ids)), f"REPLICA of {r} holds an event of {o} twice"
