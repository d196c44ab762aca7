from __future__ import annotations

import stat
from pathlib import Path

import pytest

from meshrtc.cli import build_parser
from meshrtc.commands.dev import dc_options
from meshrtc.lab.runner import dev_argv, relay_keys, relay_keys_text
from meshrtc.lab.state import LabState, LabStateError, LinkShape, StateDir
from meshrtc.lab.topology import plan_lab


def test_each_dc_runs_meshrtc_dev_on_its_addresses(tmp_path: Path) -> None:
    plan = plan_lab(3, slot=2)
    state_dir = StateDir(tmp_path)
    hub = dev_argv(plan, "dc1", state_dir, python="py")
    spoke = dev_argv(plan, "dc3", state_dir, python="py")
    assert hub[:4] == ["py", "-m", "meshrtc", "dev"]
    assert hub[hub.index("--bind") + 1] == plan.mgmt("dc1").dc_end.ip
    assert "--nats-leaf-port" in hub and "--nats-hub" not in hub
    assert hub[hub.index("--media-nodes") + 1] == "1"
    three = dev_argv(plan, "dc1", state_dir, media_nodes=3)
    assert three[three.index("--media-nodes") + 1] == "3"
    assert spoke[spoke.index("--nats-hub") + 1] == f"nats-leaf://{plan.link('dc1', 'dc3').a.ip}:7422"
    peers = [spoke[i + 1] for i, arg in enumerate(spoke) if arg == "--relay-peer"]
    assert peers == [f"dc1@{plan.link('dc1', 'dc3').a.ip}:7900", f"dc2@{plan.link('dc2', 'dc3').a.ip}:7900"]


def test_the_generated_argv_is_accepted_by_meshrtc_dev(tmp_path: Path) -> None:
    plan = plan_lab(3)
    state_dir = StateDir(tmp_path)
    keys = relay_keys(plan)
    state_dir.write_secret(state_dir.relay_keys_file("dc2"), relay_keys_text(plan, "dc2", keys))
    options = dc_options(build_parser().parse_args(dev_argv(plan, "dc2", state_dir)[3:]))
    assert options.multi_dc and options.nats_hub and options.relay_port == 7900
    assert set(options.relay_keys) == {"dc1-dc2", "dc2-dc3"}


def test_relay_keys_are_fresh_per_link_and_each_dc_gets_only_its_own() -> None:
    plan = plan_lab(3)
    keys, again = relay_keys(plan), relay_keys(plan)
    assert len(set(keys.values())) == 3 and keys != again
    assert all(len(key) == 64 for key in keys.values())
    assert relay_keys_text(plan, "dc3", keys) == f"dc1-dc3:{keys['dc1-dc3']}\ndc2-dc3:{keys['dc2-dc3']}\n"


def test_state_round_trip_and_secret_file_mode(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "lab")
    state = LabState(name="meshrtc", slot=1, datacenters=3, emulator="wire",
                     initial_delays_ms={"dc1-dc2": 45, "dc1-dc3": 20, "dc2-dc3": 20}, dc_pids={"dc1": 42})
    state_dir.save(state)
    assert state_dir.load() == state
    assert state_dir.load().plan().link("dc1", "dc2").delay_ms == 45
    state_dir.save_links({"dc1-dc2": LinkShape(delay_ms=80, loss_percent=30)})
    assert state_dir.load_links()["dc1-dc2"].shape().loss_percent == 30
    secret = state_dir.relay_keys_file("dc1")
    state_dir.write_secret(secret, "dc1-dc2:00\n")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert state_dir.load_wire_stats() == {}
    state_dir.save_wire_stats({"dc1-dc2": {"a_to_b": {"passed": 5}}})
    assert state_dir.load_wire_stats()["dc1-dc2"]["a_to_b"]["passed"] == 5
    (tmp_path / "lab" / "operator-notes.txt").write_text("keep me")
    state_dir.remove()
    assert sorted(p.name for p in (tmp_path / "lab").iterdir()) == ["operator-notes.txt"]


def test_a_broken_state_file_is_a_clear_error(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path)
    with pytest.raises(LabStateError, match="no lab here"):
        state_dir.load()
    state_dir.state_file.write_text('{"name": 3}')
    with pytest.raises(LabStateError, match="not a lab state file"):
        state_dir.load()
