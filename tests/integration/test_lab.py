"""The failover lab on the real kernel: namespaces, emulated links, one full DC in each.

Skipped unless root with `ip` (CI runs as root). One 3-DC lab serves the module; the tests that
change links put them back. Timing bounds: an emulated link can never be faster than its delay
(the lower bounds are strict), and the upper bounds leave room for a loaded 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from meshrtc.lab import netns, runner
from meshrtc.lab.state import StateDir
from tests.support.lab import RunningLab, lab_unavailable_reason, running_lab

pytestmark = pytest.mark.skipif(lab_unavailable_reason() is not None, reason=str(lab_unavailable_reason()))

SLACK_MS = 30  # scheduling noise on a loaded machine, on top of the emulated round trip


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    with running_lab(tmp_path_factory.mktemp("lab"), datacenters=3) as running:
        yield running


def _wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def _median_rtt(lab: RunningLab, a: str, b: str) -> float:
    result = lab.ping(a, b, count=10, interval=0.1)
    assert result.received >= 8, result
    return statistics.median(result.rtts_ms[1:])  # the first one also pays for ARP


def test_every_dc_serves_signal_from_the_root_namespace_and_from_inside_its_own(lab: RunningLab) -> None:
    for dc in lab.datacenters:
        assert httpx.get(lab.http_url(dc) + "/", timeout=5).status_code == 200
        inside = lab.run_in(dc, [sys.executable, "-c",
                                 f"import httpx; print(httpx.get('{lab.http_url(dc)}/', timeout=5).status_code)"])
        assert inside.stdout.strip() == "200", inside.stderr


def test_sdk_participants_inside_a_dc_namespace_hear_each_other(lab: RunningLab) -> None:
    """What the multi-DC tests build on: LiveKit SDK clients run inside a DC and use its URL."""
    script = Path(__file__).resolve().parent.parent / "support" / "lab_sdk_probe.py"
    done = lab.run_in("dc2", [sys.executable, str(script), lab.url("dc2"), lab.token("alice", "lab-smoke"),
                              lab.token("bob", "lab-smoke"), "30"], timeout=90)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-2000:]}\n{lab.log_tail('dc2')}"
    assert json.loads(done.stdout.strip().splitlines()[-1])["frames"] >= 50


def test_events_of_a_spoke_reach_the_other_dcs_replicas(lab: RunningLab) -> None:
    """dev's multi-DC wiring end to end: dc2's events (its room service's, from the SDK test or
    from this one's join) are sourced into REPLICA_<DC> of dc1 and dc3 over the leafnodes."""
    import asyncio

    import nats

    from shared.replication import replica_stream

    script = Path(__file__).resolve().parent.parent / "support" / "lab_sdk_probe.py"
    lab.run_in("dc2", [sys.executable, str(script), lab.url("dc2"), lab.token("carol", "lab-replication"),
                       lab.token("dave", "lab-replication"), "30"], timeout=90)

    async def dc2_subjects_in(dc: str) -> dict[str, int]:
        client = await nats.connect(lab.nats_url(dc), connect_timeout=5)
        try:
            info = await client.jetstream().stream_info(replica_stream(dc), subjects_filter="events.dc2.>")
            return dict(info.state.subjects or {})
        finally:
            await client.close()

    for dc in ("dc1", "dc3"):
        assert _wait_for(lambda dc=dc: bool(asyncio.run(dc2_subjects_in(dc))), timeout=30), dc


def test_spokes_have_their_leafnode_to_the_hub(lab: RunningLab) -> None:
    assert sorted(runner.leafnode_remotes(lab.plan, "dc1") or []) == ["dc2", "dc3"]
    for spoke in ("dc2", "dc3"):
        assert runner.leafnode_remotes(lab.plan, spoke) == ["dc1"]


def test_round_trips_match_the_emulated_delays(lab: RunningLab) -> None:
    for (a, b), one_way_ms in {("dc1", "dc2"): 30, ("dc1", "dc3"): 20, ("dc2", "dc3"): 20}.items():
        rtt = _median_rtt(lab, a, b)
        assert 2 * one_way_ms <= rtt <= 2 * one_way_ms + SLACK_MS, (a, b, rtt)


def test_dcs_reach_each_other_only_over_their_direct_links(lab: RunningLab) -> None:
    # dc1 has no route to dc2's management address nor to the dc2-dc3 link: nothing forwards.
    for ip in (lab.mgmt_ip("dc2"), lab.mgmt_ip("dc3"), lab.link_ip("dc2", "dc3")):
        result = lab.ping_ip("dc1", ip, count=1, timeout=1)
        assert result.received == 0, ip


def test_cut_makes_the_direct_link_unreachable_and_heal_restores_it(lab: RunningLab) -> None:
    lab.cut("dc1", "dc2")
    try:
        cut = lab.ping("dc1", "dc2", count=2, timeout=1)
        assert cut.received == 0 and cut.error == "Network is unreachable"
        assert lab.ping("dc2", "dc1", count=1, timeout=1).received == 0
        assert lab.ping("dc1", "dc3", count=2).received == 2  # the other links are untouched
        assert lab.ping_ip("dc1", lab.mgmt_ip("dc2"), count=1, timeout=1).received == 0  # no detour via mgmt
        assert httpx.get(lab.http_url("dc2") + "/", timeout=5).status_code == 200  # clients still reach dc2
    finally:
        lab.heal("dc1", "dc2")
    assert lab.ping("dc1", "dc2", count=3).received == 3


def test_degrade_adds_loss_and_delay_in_each_direction(lab: RunningLab) -> None:
    lab.degrade("dc1", "dc3", loss_percent=30, delay_ms=50)
    try:
        result = lab.ping("dc1", "dc3", count=60, interval=0.05, timeout=1)
        # 30% each way: a round trip survives with 0.7 * 0.7 = 49%; 60 samples put it well inside 20..80%.
        assert 20 <= result.loss_percent <= 80, result
        assert min(result.rtts_ms) >= 100
        if lab.state.emulator == "wire":  # its counters show the loss it made (stats every second)
            assert _wait_for(lambda: lab.state_dir.load_wire_stats()["dc1-dc3"]["a_to_b"]["lost"] > 0, timeout=5)
    finally:
        lab.degrade("dc1", "dc3", loss_percent=0, delay_ms=20)
    healed = lab.ping("dc1", "dc3", count=10, interval=0.05)
    assert healed.received == 10 and statistics.median(healed.rtts_ms) < 40 + SLACK_MS


def test_partition_isolates_a_dc_but_keeps_it_serving_its_clients(lab: RunningLab) -> None:
    lab.partition("dc2")
    try:
        assert lab.ping("dc2", "dc1", count=1, timeout=1).received == 0
        assert lab.ping("dc2", "dc3", count=1, timeout=1).received == 0
        assert lab.ping("dc1", "dc3", count=2).received == 2
        assert httpx.get(lab.http_url("dc2") + "/", timeout=5).status_code == 200
        # NATS notices the dead leafnode by its pings (2 s interval, 2 missed): well within 20 s.
        assert _wait_for(lambda: runner.leafnode_remotes(lab.plan, "dc2") == [], timeout=20)
    finally:
        lab.unpartition("dc2")
    assert _wait_for(lambda: runner.leafnode_remotes(lab.plan, "dc2") == ["dc1"], timeout=30)
    assert lab.ping("dc2", "dc1", count=2).received == 2


def test_status_reports_links_processes_and_leafnodes(lab: RunningLab) -> None:
    lab.cut("dc2", "dc3")
    try:
        done = subprocess.run([sys.executable, "-m", "meshrtc", "lab", "--state-dir", str(lab.state_dir.path),
                               "status", "--json"], capture_output=True, text=True, timeout=60)
    finally:
        lab.heal("dc2", "dc3")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert {row["name"]: row["state"] for row in status["links"]} == {
        "dc1-dc2": "up", "dc1-dc3": "up", "dc2-dc3": "down"}
    assert [row["delay_ms"] for row in status["links"]] == [30, 20, 20]
    assert all(dc["alive"] and dc["signal"] for dc in status["datacenters"])
    assert status["wire_alive"] in (True, None)  # None: kernel netem, no emulator process
    assert status["datacenters"][1]["leafnodes"] == ["dc1"]


def test_relay_keys_are_private_to_root_and_to_the_links_of_each_dc(lab: RunningLab) -> None:
    keys = {}
    for dc in lab.datacenters:
        path = lab.state_dir.relay_keys_file(dc)
        assert path.stat().st_mode & 0o777 == 0o600
        keys[dc] = dict(line.split(":", 1) for line in path.read_text().split())
    assert sorted(keys["dc1"]) == ["dc1-dc2", "dc1-dc3"]
    assert keys["dc1"]["dc1-dc2"] == keys["dc2"]["dc1-dc2"]  # both ends share the link's key
    assert keys["dc1"]["dc1-dc2"] != keys["dc1"]["dc1-dc3"]


def _lab_leftovers(name: str, slot: int, pids: list[int]) -> list[str]:
    left = [ns for ns in netns.namespaces() if ns.startswith(f"{name}-")]
    left += [dev for dev in netns.root_devices() if dev.startswith(f"mlab{slot}-")]
    left += [f"pid {pid}" for pid in pids if netns.pid_alive(pid)]
    return left


def test_down_after_a_crashed_up_leaves_nothing_behind(tmp_path: Path) -> None:
    """`up` is killed outright while its DCs start; `down` still removes every namespace, device
    and process (the DCs' services and NATS servers included), and a second `down` is a no-op."""
    state_dir = tmp_path / "state"
    name = f"crash{os.getpid()}"
    cli = [sys.executable, "-m", "meshrtc", "lab", "--state-dir", str(state_dir)]
    up = subprocess.Popen([*cli, "up", "--datacenters", "2", "--name", name], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        started = _wait_for(lambda: StateDir(state_dir).exists() and len(StateDir(state_dir).load().dc_pids) == 2,
                            timeout=60, interval=0.1)
        assert started, "lab up never started its DCs"
        state = StateDir(state_dir).load()
        time.sleep(3)  # let the DCs spawn their services and NATS
        pids = [pid for dc in ("dc1", "dc2") for pid in netns.namespace_pids(f"{name}-{dc}")]
        if state.wire_pid:
            pids.append(state.wire_pid)
        assert len(pids) > 2
    finally:
        up.send_signal(signal.SIGKILL)
        up.wait()
    assert _lab_leftovers(name, state.slot, pids)  # the crash left the lab behind
    for _ in range(2):
        done = subprocess.run([*cli, "down"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert _lab_leftovers(name, state.slot, pids) == []
    assert not state_dir.exists()


def test_the_fixture_tears_its_lab_down(tmp_path: Path) -> None:
    with running_lab(tmp_path, datacenters=2, services=False) as small:
        name, slot = small.plan.name, small.plan.slot
        wire = [small.state.wire_pid] if small.state.wire_pid else []
        assert _lab_leftovers(name, slot, wire)
    assert _lab_leftovers(name, slot, wire) == []

