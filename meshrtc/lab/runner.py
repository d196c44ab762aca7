"""Bringing a lab up and down: the network (through `netns`), the wire emulator and one
`meshrtc dev` per DC, each started detached inside its namespace with its log in the state dir."""

from __future__ import annotations

import fcntl
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from meshrtc.lab import netns, steps
from meshrtc.lab.state import Emulator, LabState, LinkShape, StateDir
from meshrtc.lab.topology import (
    MAX_SLOT,
    NATS_HTTP_PORT,
    NATS_LEAF_PORT,
    NATS_PORT,
    RELAY_PORT,
    SIGNAL_PORT,
    LabPlan,
    namespace_name,
    plan_lab,
)
from shared.errors import ToolError

LOCK_FILE = Path("/run/meshrtc-lab.lock")


class LabError(ToolError, RuntimeError):
    pass


def dev_argv(plan: LabPlan, dc: str, state_dir: StateDir, python: str = sys.executable,
             media_nodes: int = 1) -> list[str]:
    """`meshrtc dev` for one DC of the lab: signal on the management address, NATS on every
    address of the namespace (spokes reach the hub's leafnode port over their direct link),
    relay peers at the other DCs' ends of the direct links."""
    mgmt_ip = plan.mgmt(dc).dc_end.ip
    argv = [
        python, "-m", "meshrtc", "dev", "--dc", dc,
        "--bind", mgmt_ip, "--port", str(SIGNAL_PORT), "--advertise-ip", mgmt_ip,
        "--nats-host", "0.0.0.0", "--nats-port", str(NATS_PORT), "--nats-http-port", str(NATS_HTTP_PORT),
        "--datacenters", ",".join(plan.datacenters),
        "--relay-port", str(RELAY_PORT), "--relay-keys-file", str(state_dir.relay_keys_file(dc)),
        "--data-dir", str(state_dir.dc_dir(dc) / "data"), "--media-nodes", str(media_nodes),
    ]
    for link in plan.links_of(dc):
        peer = link.other(dc)
        argv += ["--relay-peer", f"{peer.dc}@{peer.ip}:{RELAY_PORT}"]
    if dc == plan.hub:
        argv += ["--nats-leaf-port", str(NATS_LEAF_PORT)]
    else:
        hub_end = plan.link(dc, plan.hub).end_in(plan.hub)
        argv += ["--nats-hub", f"nats-leaf://{hub_end.ip}:{NATS_LEAF_PORT}"]
    return argv


def relay_keys(plan: LabPlan) -> dict[str, str]:
    """A fresh 256-bit key per link, `dcA-dcB` → 64 hex digits."""
    return {link.name: secrets.token_hex(32) for link in plan.links}


def relay_keys_text(plan: LabPlan, dc: str, keys: dict[str, str]) -> str:
    """The keys of `dc`'s own links only: a DC cannot read traffic on links it is not part of."""
    return "".join(f"{link.name}:{keys[link.name]}\n" for link in plan.links_of(dc))


@contextmanager
def slot_lock() -> Iterator[None]:
    """Two `lab up` at once (a test run and an operator) must not pick the same slot."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def free_slot() -> int:
    used = {int(m.group(1)) for dev in netns.root_devices() if (m := re.fullmatch(r"mlab(\d+)-dc\d+", dev))}
    for slot in range(MAX_SLOT + 1):
        if slot not in used:
            return slot
    raise LabError("every lab slot is in use (too many labs are up)")


def up(
    state_dir: StateDir,
    datacenters: int,
    *,
    name: str,
    slot: int | None,
    delays_ms: dict[tuple[str, str], int],
    emulator: Emulator,
    services: bool,
    media_nodes: int = 1,
    ready_timeout: float = 120.0,
    say: Callable[[str], None] = print,
) -> tuple[LabPlan, LabState]:
    """Build the lab (`slot` None: the first free one). On any failure everything already made
    is removed again."""
    if state_dir.exists():
        raise LabError(f"a lab is already recorded in {state_dir.path} (run `meshrtc lab down` first)")
    with slot_lock():
        plan = plan_lab(datacenters, name=name, slot=free_slot() if slot is None else slot, delays_ms=delays_ms)
        clash = {plan.namespace(dc) for dc in plan.datacenters} & netns.namespaces()
        if clash:
            raise LabError(f"namespaces {', '.join(sorted(clash))} already exist: another lab named {name!r} "
                           "is up (`meshrtc lab down`, or choose another --name)")
        if any(mgmt.root.device in netns.root_devices() for mgmt in plan.management):
            raise LabError(f"slot {plan.slot} is in use by another lab (leave --slot out to pick a free one)")
        state = _build_network(state_dir, plan, emulator, services)
    try:
        say(f"lab {plan.name}: network up ({len(plan.datacenters)} DCs, {len(plan.links)} links, {emulator})")
        if services:
            keys = relay_keys(plan)
            for dc in plan.datacenters:
                state_dir.write_secret(state_dir.relay_keys_file(dc), relay_keys_text(plan, dc, keys))
                state.dc_pids[dc] = _start_dc(plan, dc, state_dir, media_nodes)
                state_dir.save(state)
            wait_ready(plan, state, state_dir, timeout=ready_timeout)
        return plan, state
    except BaseException:
        down(state_dir, plan)
        raise


def _build_network(state_dir: StateDir, plan: LabPlan, emulator: Emulator, services: bool) -> LabState:
    state = LabState(
        name=plan.name, slot=plan.slot, datacenters=len(plan.datacenters), emulator=emulator, services=services,
        initial_delays_ms={link.name: link.delay_ms for link in plan.links},
    )
    state_dir.save(state)  # first, so that `down` can undo whatever follows
    state_dir.save_links({link.name: LinkShape(delay_ms=link.delay_ms) for link in plan.links})
    try:
        netns.apply_all(steps.namespace_steps(plan))
        if emulator == "wire":
            _start_wire(state_dir, state)
        else:
            netns.apply_all(steps.veth_link_steps(plan, shaped=emulator == "netem"))
        netns.apply_all(steps.link_address_steps(plan))
        netns.apply_all(steps.management_steps(plan))
        return state
    except BaseException:
        down(state_dir, plan)
        raise


def _start_wire(state_dir: StateDir, state: LabState, timeout: float = 60.0) -> None:
    log_path = state_dir.path / "wire.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "meshrtc.lab.wire", str(state_dir.path)],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    state.wire_pid = process.pid
    state_dir.save(state)  # before waiting: `down` must find it even if it never gets ready
    deadline = time.monotonic() + timeout
    while not state_dir.wire_ready_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            exited = process.poll() is not None
            what = f"exited with {process.returncode}" if exited else f"was not ready within {timeout:.0f} s"
            raise LabError(f"the wire emulator {what}:\n{_tail(log_path)}")
        time.sleep(0.05)


def _start_dc(plan: LabPlan, dc: str, state_dir: StateDir, media_nodes: int) -> int:
    log_path = state_dir.log_file(dc)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = dev_argv(plan, dc, state_dir, media_nodes=media_nodes)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(netns.exec_argv(plan.namespace(dc), argv), stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return process.pid


def signal_answers(plan: LabPlan, dc: str) -> bool:
    try:
        return httpx.get(f"http://{plan.mgmt(dc).dc_end.ip}:{SIGNAL_PORT}/", timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


def leafnode_remotes(plan: LabPlan, dc: str) -> list[str] | None:
    """Names of the servers `dc`'s NATS has a leafnode connection with (None: monitoring unreachable)."""
    try:
        leafz = httpx.get(f"{plan.nats_monitor_url(dc)}/leafz", timeout=1.0).json()
    except (httpx.HTTPError, ValueError):
        return None
    return [str(leaf.get("name", "?")) for leaf in leafz.get("leafs") or []]


def wait_ready(plan: LabPlan, state: LabState, state_dir: StateDir, timeout: float) -> None:
    """Every DC answers GET / and every spoke has its leafnode to the hub."""
    deadline = time.monotonic() + timeout
    waiting = list(plan.datacenters)
    while waiting:
        for dc in list(waiting):
            pid = state.dc_pids.get(dc)
            if pid is not None and not netns.pid_alive(pid):
                raise LabError(f"{dc}: meshrtc dev exited:\n{log_tail(state_dir, dc)}")
            leafs_ok = dc == plan.hub or bool(leafnode_remotes(plan, dc))
            if leafs_ok and signal_answers(plan, dc):
                waiting.remove(dc)
        if waiting and time.monotonic() > deadline:
            tails = "\n".join(f"--- {dc} ---\n{log_tail(state_dir, dc)}" for dc in waiting)
            raise LabError(f"not ready within {timeout:.0f} s: {', '.join(waiting)}\n{tails}")
        if waiting:
            time.sleep(0.5)


def log_tail(state_dir: StateDir, dc: str, lines: int = 20) -> str:
    """The end of a DC's log, for errors: `up` removes the lab (logs included) when it fails."""
    return _tail(state_dir.log_file(dc), lines)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def down(state_dir: StateDir, plan: LabPlan | None, *, name: str = "meshrtc", slot: int = 0) -> None:
    """Stop every process the lab started and remove everything it made. Idempotent; without a
    plan (state lost) it removes what matches the lab's name and slot."""
    state = state_dir.load() if state_dir.exists() else None
    if plan is None and state is not None:
        plan = state.plan()
    lab_namespaces = _lab_namespaces(plan.name if plan else name)
    pids = [pid for ns in lab_namespaces for pid in netns.namespace_pids(ns)]
    if state is not None:
        pids += list(state.dc_pids.values())
    netns.stop_processes(sorted(set(pids)), timeout=5)
    if state is not None and state.wire_pid:
        netns.stop_processes([state.wire_pid], timeout=5)
    if plan is not None:
        netns.apply_all(steps.teardown_steps(plan), check=False)
    for ns in lab_namespaces & netns.namespaces():
        netns.apply(steps.Run(("ip", "netns", "del", ns)), check=False)
    the_slot = plan.slot if plan else slot
    for dev in netns.root_devices():
        if re.fullmatch(rf"mlab{the_slot}-dc\d+", dev):
            netns.apply(steps.Run(("ip", "link", "del", "dev", dev)), check=False)
    state_dir.remove()


def _lab_namespaces(name: str) -> set[str]:
    pattern = re.compile(re.escape(namespace_name(name, "dc")) + r"\d+")
    return {ns for ns in netns.namespaces() if pattern.fullmatch(ns)}

