"""Scale and hard-failure behaviour with LiveKit's Python SDK against `meshrtc dev`.

(a) Clients that are SIGKILLed mid-call (50 SDK rooms in 5 processes) or mid-negotiation (a raw
    WebSocket client holding an unanswered subscriber offer) leave nothing behind on the media
    node: sessions, room membership, peers, asyncio tasks and memory return to their baseline.
(b) 20 participants in one room (four client processes of five), each publishing audio, all see
    and subscribe to each other. Last in the module: it is the heaviest and would taint the others
    if it left residue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import nats.errors
import pytest
from livekit import rtc

from .conftest import DevServer, start_dev_server, stop_dev_server
from .sdk_helpers import SyntheticPublisher, dev_nats_url, media_node_stats, publish_synthetic, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(200)]
warnings.filterwarnings("ignore", message=".*HMAC key.*")

CLIENT_PROC = Path(__file__).with_name("sdk_client_proc.py")
MB = 1 << 20
# These tests load the whole machine on purpose. With the default 500 ms heartbeats (node down after
# ~1.5 s of silence) a shared 2-core runner at load 20-40 starves the heartbeat path (nats-server, the
# room service) long enough for the room service to declare the media node down and move every
# client, which is node-failure handling (tests/e2e/test_node_failure.py), not what is measured here.
HEARTBEAT_MS = 2000


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MESHRTC_HEARTBEAT_MS", str(HEARTBEAT_MS))
        server = start_dev_server(tmp_path_factory.mktemp("dev"))
    try:
        yield server
    finally:
        stop_dev_server(server)


async def stats_now(nats_url: str, attempts: int = 5) -> dict[str, Any]:
    """The media node's stats; a node whose event loop is busy may miss one 2 s request deadline."""
    for attempt in range(attempts):
        try:
            return await media_node_stats(nats_url)
        except (TimeoutError, nats.errors.TimeoutError):
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def poll_stats(nats_url: str, predicate: Callable[[dict[str, Any]], bool], timeout: float,
                     interval: float = 0.25) -> tuple[bool, dict[str, Any], float]:
    """Polls the media node's stats until `predicate` holds; returns (held, last stats, seconds)."""
    start = time.monotonic()
    stats = await stats_now(nats_url)
    while not predicate(stats):
        if time.monotonic() - start > timeout:
            return False, stats, time.monotonic() - start
        await asyncio.sleep(interval)
        stats = await stats_now(nats_url)
    return True, stats, time.monotonic() - start


def summary(stats: dict[str, Any]) -> str:
    rooms = {name: len(ids) for name, ids in stats["rooms"].items()}
    return (f"sessions={stats['sessions']} tracks={stats['tracks']} tasks={stats['asyncio_tasks']} "
            f"peers={stats['open_peers']} rss={stats['rss_bytes'] / MB:.0f}MB rooms={rooms}")


def audio_subscribed(participant: rtc.RemoteParticipant) -> bool:
    audio = [p for p in participant.track_publications.values() if p.kind == rtc.TrackKind.KIND_AUDIO]
    return bool(audio) and all(p.subscribed and p.track is not None for p in audio)


def open_log(path: Path) -> BinaryIO:
    return open(path, "ab")


async def spawn_client(*args: str, log: Path) -> asyncio.subprocess.Process:
    """A client process (sdk_client_proc.py); its stderr (SDK logs) goes to `log`."""
    log_file = open_log(log)
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, str(CLIENT_PROC), *args, stdout=asyncio.subprocess.PIPE, stderr=log_file,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    finally:
        log_file.close()


async def wait_ready(process: asyncio.subprocess.Process, timeout: float) -> str:
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), timeout)).decode()
    assert line.startswith("READY"), f"client process said {line!r}"
    return line.strip()


async def client_status(process: asyncio.subprocess.Process, timeout: float) -> str:
    """The client's READY/ERROR line, or why there is none (a busy server may take longer)."""
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), timeout)).decode().strip()
    except TimeoutError:
        return f"no READY within {timeout:.0f}s"
    return line[:300]


def kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)


async def test_client_killed_mid_negotiation_is_released(dev_server: DevServer, tmp_path: Path) -> None:
    """A raw client takes its JoinResponse and first subscriber offer in a room with a publisher and
    dies without answering: the node drops it long before the 20 s never-connected deadline."""
    nats_url = dev_nats_url(dev_server.log())
    room_name = "scale-raw-kill"
    alice = rtc.Room()
    publisher: SyntheticPublisher | None = None
    process: asyncio.subprocess.Process | None = None
    try:
        await alice.connect(dev_server.url, dev_server.token("alice", room_name))
        publisher = await publish_synthetic(alice, video=False)
        ok, before, _ = await poll_stats(nats_url, lambda s: s["rooms"].get(room_name) == ["alice"]
                                         and s["tracks"] >= 1, 10)
        assert ok, summary(before)
        joined = time.monotonic()
        process = await spawn_client("raw", dev_server.url, dev_server.token("raw-victim", room_name),
                                     log=tmp_path / "raw.log")
        ready = await wait_ready(process, 20)
        assert ready.startswith("READY join,") and "offer" in ready, ready
        ok, during, _ = await poll_stats(nats_url, lambda s: "raw-victim" in s["rooms"].get(room_name, []), 5)
        assert ok, summary(during)
        kill(process)
        await process.wait()
        killed = time.monotonic()
        ok, after, took = await poll_stats(nats_url, lambda s: s["rooms"].get(room_name) == ["alice"]
                                           and s["sessions"] == before["sessions"]
                                           and s["open_peers"] == before["open_peers"], 20)
        print(f"\nraw client killed {killed - joined:.1f}s after joining; gone from the node {took:.1f}s "
              f"after SIGKILL: {summary(after)}")
        assert ok, summary(after)
        # Released because its connection died, not by the 20 s never-connected deadline (which would
        # also leak it today: see test_bad_input.py::test_never_connected_client_leaves_no_residue).
        assert took < 15, took
    finally:
        if process is not None and process.returncode is None:
            kill(process)
            await process.wait()
        # Bounded: in one CI rehearsal this teardown hung inside the SDK for 200 s after every
        # assertion had passed; a stuck client library must not turn into a failed server test.
        with contextlib.suppress(TimeoutError):
            if publisher is not None:
                await asyncio.wait_for(publisher.stop(), 15)
            await asyncio.wait_for(alice.disconnect(), 15)


async def test_sigkilled_clients_leave_no_residue(dev_server: DevServer, tmp_path: Path) -> None:
    nats_url = dev_nats_url(dev_server.log())
    ok, baseline, _ = await poll_stats(nats_url, lambda s: s["sessions"] == 0 and s["open_peers"] == 0, 30)
    assert ok, f"node not idle before the test: {summary(baseline)}"
    await asyncio.sleep(2)  # let closed sessions' last tasks finish
    baseline = await stats_now(nats_url)
    print(f"\nbaseline: {summary(baseline)}")

    room_name, procs_n, per_proc, publishers_per_proc = "scale-kill", 5, 10, 1
    total = procs_n * per_proc
    processes: list[asyncio.subprocess.Process] = []
    try:
        start = time.monotonic()
        for p in range(procs_n):  # all processes at once; each joins its rooms one after the other
            tokens = [dev_server.token(f"k{p}-{i}", room_name) for i in range(per_proc)]
            processes.append(await spawn_client("sdk", dev_server.url, str(publishers_per_proc), *tokens,
                                                log=tmp_path / f"client{p}.log"))
        ready = await asyncio.gather(*(client_status(process, 60) for process in processes))
        ok, loaded, _ = await poll_stats(
            nats_url, lambda s: len(s["rooms"].get(room_name, [])) == total and s["tracks"] >= 1, 30)
        present = set(loaded["rooms"].get(room_name, []))
        node_downs = dev_server.log().count("missed its heartbeats")
        print(f"{total} clients up in {time.monotonic() - start:.1f}s: {summary(loaded)}; {ready}; "
              f"media node falsely declared down {node_downs}x so far")
        if not ok:
            # Not asserted (server bug, see the report): a busy media node misses 3 heartbeats of 500 ms,
            # the room service declares it down and every client is told to rejoin, so some never settle.
            expected = {f"k{p}-{i}" for p in range(procs_n) for i in range(per_proc)}
            print(f"NOT all {total} on the node; missing {sorted(expected - present)}")
        assert len(present) >= total // 2, summary(loaded)  # enough load for the residue checks to mean something
        await asyncio.sleep(3)  # mid-call: media flowing to every subscriber
        mid_call = await stats_now(nats_url)
        print(f"mid-call: {summary(mid_call)}")

        for process in processes:
            kill(process)
        killed_at = time.monotonic()
        for process in processes:
            await process.wait()

        ok, after, took = await poll_stats(
            nats_url, lambda s: s["sessions"] == baseline["sessions"] and not s["rooms"].get(room_name), 20)
        print(f"sessions back to baseline {took:.1f}s after SIGKILL: {summary(after)}")
        assert ok, summary(after)
        ok, after, _ = await poll_stats(
            nats_url, lambda s: s["open_peers"] == baseline["open_peers"] and s["tracks"] == baseline["tracks"]
            and s["asyncio_tasks"] <= baseline["asyncio_tasks"] + 5, 30 - (time.monotonic() - killed_at))
        print(f"peers/tasks settled {time.monotonic() - killed_at:.1f}s after SIGKILL: {summary(after)}")
        assert ok, f"baseline {summary(baseline)} / now {summary(after)}"
        growth = (after["rss_bytes"] - baseline["rss_bytes"]) / MB
        print(f"RSS baseline {baseline['rss_bytes'] / MB:.0f}MB, peak-ish {mid_call['rss_bytes'] / MB:.0f}MB, "
              f"after {after['rss_bytes'] / MB:.0f}MB (growth {growth:+.0f}MB)")
        assert after["rss_bytes"] < baseline["rss_bytes"] + 150 * MB
    finally:
        for process in processes:
            kill(process)
            await process.wait()


async def read_status(process: asyncio.subprocess.Process, latest: dict[str, Any]) -> None:
    """Keeps `latest` updated with the process's newest STATUS line."""
    assert process.stdout is not None
    while line := await process.stdout.readline():
        if line.startswith(b"STATUS "):
            status = json.loads(line[7:])
            latest.update(status["rooms"])
            latest.setdefault("_events", {})[process.pid] = status["events"]


async def test_twenty_participants_all_subscribe_to_each_other(dev_server: DevServer, tmp_path: Path) -> None:
    """Twenty SDK participants, each publishing audio, all hear each other. They run in four processes
    of five, as twenty people would bring their own machines: twenty SDK clients in one Python
    process spend a whole core on their own event loop, and the SDK's native threads then wait for
    the GIL to deliver events, which stalls their answers to the server's offers (measured: the
    pytest process at 100 % of a core, offers answered 10-20 s late)."""
    room_name, n, per_process = "scale-20", 20, 5
    identities = [f"p{i:02d}" for i in range(n)]
    nats_url = dev_nats_url(dev_server.log())
    latest: dict[str, Any] = {}
    processes: list[asyncio.subprocess.Process] = []
    readers: list[asyncio.Task[None]] = []
    start = time.monotonic()
    try:
        for p in range(0, n, per_process):
            tokens = [dev_server.token(identity, room_name) for identity in identities[p:p + per_process]]
            process = await spawn_client("mesh", dev_server.url, *tokens, log=tmp_path / f"mesh{p}.log")
            processes.append(process)
        ready = await asyncio.gather(*(client_status(process, 60) for process in processes))
        assert all(line == "READY" for line in ready), ready
        published = time.monotonic() - start
        readers.extend(asyncio.ensure_future(read_status(process, latest)) for process in processes)

        def missing() -> list[str]:
            out = []
            for identity in identities:
                if (status := latest.get(identity)) is None:
                    out.append(f"{identity}: no status yet")
                    continue
                others = set(identities) - {identity}
                if set(status["sees"]) != others:
                    out.append(f"{identity}: sees {len(status['sees'])} participants ({status['state']})")
                elif lacking := sorted(others - set(status["hears"])):
                    out.append(f"{identity}: not subscribed to {lacking} ({status['state']})")
            return out

        ok = await wait_for(lambda: not missing(), 60, interval=0.5)
        elapsed = time.monotonic() - start
        stats = await stats_now(nats_url)
        done = f"all {n * (n - 1)} subscriptions in {elapsed:.1f}s" if ok else \
            f"NOT all {n * (n - 1)} subscriptions after {elapsed:.1f}s"
        print(f"\n20 participants in {len(processes)} processes: joined and published in {published:.1f}s, "
              f"{done}; node: {summary(stats)}")
        if not ok:
            print("missing:", *missing(), "client events:", latest.get("_events"), sep="\n  ")
        assert ok, f"{len(missing())} participants incomplete"
        # Twenty libwebrtc clients and the server share two cores here: a client whose checks went
        # unanswered while the machine was saturated may reconnect, which is reported; every
        # subscription must still be in place (above), and leaving the room is a failure.
        events = [e for process_events in latest.get("_events", {}).values() for e in process_events]
        if events:
            print("client connection events:", events)
        assert not [e for e in events if e.endswith("disconnected")], f"clients left the room: {events}"
        assert sorted(stats["rooms"][room_name]) == identities
        assert stats["tracks"] >= n
    finally:
        for reader in readers:
            reader.cancel()
        for process in processes:
            kill(process)
            await process.wait()
