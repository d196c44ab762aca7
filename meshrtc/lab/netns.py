"""The `ip`/`tc` adapter: carries out `steps` and reads namespaces, links and their processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from meshrtc.lab.steps import Step, Sysctl
from meshrtc.lab.topology import Endpoint
from shared.errors import ToolError


class LabNetworkError(ToolError, RuntimeError):
    pass


def require_root_and_ip() -> None:
    if os.geteuid() != 0:
        raise LabNetworkError("meshrtc lab needs root (network namespaces, veth, tc): run it with sudo")
    if shutil.which("ip") is None:
        raise LabNetworkError("meshrtc lab needs the `ip` command: install iproute2")


def apply(step: Step, *, check: bool = True) -> bool:
    """Run one step; with check=False a failure is reported by the result instead of raised."""
    if isinstance(step, Sysctl):
        path = "/proc/sys/" + step.key.replace(".", "/")
        if step.namespace is None:
            try:
                Path(path).write_text(step.value)
                return True
            except OSError as exc:
                if check:
                    raise LabNetworkError(f"{step}: {exc}") from None
                return False
        argv: tuple[str, ...] = ("ip", "netns", "exec", step.namespace, "sh", "-c", f"echo {step.value} > {path}")
    else:
        argv = step.argv
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0 and check:
        raise LabNetworkError(f"`{' '.join(argv)}` failed: {result.stderr.strip() or result.returncode}")
    return result.returncode == 0


def apply_all(steps: list[Step], *, check: bool = True) -> None:
    for step in steps:
        apply(step, check=check)


def namespaces() -> set[str]:
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def root_devices() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def netem_available() -> bool:
    """Whether this kernel has `sch_netem` (some VMs ship without it)."""
    probe = f"meshrtc-netem-probe-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    try:
        subprocess.run(["ip", "-n", probe, "link", "set", "dev", "lo", "up"], capture_output=True)
        result = subprocess.run(["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                                capture_output=True)
        return result.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)


@dataclass(frozen=True)
class DeviceState:
    exists: bool
    admin_up: bool


def device_state(end: Endpoint) -> DeviceState:
    argv = ["ip", *(["-n", end.namespace] if end.namespace else []), "-j", "link", "show", "dev", end.device]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        return DeviceState(exists=False, admin_up=False)
    info = json.loads(result.stdout or "[]")
    return DeviceState(exists=bool(info), admin_up=bool(info) and "UP" in info[0].get("flags", []))


def namespace_pids(namespace: str) -> list[int]:
    result = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split() if pid.isdigit()]


def exec_argv(namespace: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *argv]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own unreaped child) is as good as dead
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def stop_processes(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM (to each whole process group led by the pid, so `meshrtc dev` and its services go
    together), then SIGKILL whatever is left after `timeout`."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if pid_alive(pid):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, signum: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
