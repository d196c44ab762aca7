"""What to run to build, change and remove a lab's network, as data (`ip`/`tc` argv and sysctls).

Pure: `netns.py` executes the steps. Keeping them as data lets the unit tests check the exact
commands and lets `meshrtc lab up --dry-run` print them.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshrtc.lab.topology import Endpoint, LabPlan, Link


@dataclass(frozen=True)
class Run:
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return " ".join(self.argv)


@dataclass(frozen=True)
class Sysctl:
    """Write `/proc/sys/<key with / for .>` in `namespace` (None: the root namespace)."""

    namespace: str | None
    key: str
    value: str

    def __str__(self) -> str:
        where = f"ip netns exec {self.namespace} " if self.namespace else ""
        return f"{where}sysctl -w {self.key}={self.value}"


Step = Run | Sysctl


def _ip(endpoint: Endpoint, *args: str) -> Run:
    return Run(("ip", *(("-n", endpoint.namespace) if endpoint.namespace else ()), *args))


def _tc(endpoint: Endpoint, *args: str) -> Run:
    return Run(("tc", *(("-n", endpoint.namespace) if endpoint.namespace else ()), *args))


def netem_args(delay_ms: int, loss_percent: float = 0.0) -> tuple[str, ...]:
    args: tuple[str, ...] = ("netem", "delay", f"{delay_ms}ms")
    if loss_percent > 0:
        args += ("loss", f"{loss_percent:g}%")
    return args


def namespace_steps(plan: LabPlan) -> list[Step]:
    steps: list[Step] = []
    for dc in plan.datacenters:
        ns = plan.namespace(dc)
        steps += [
            Run(("ip", "netns", "add", ns)),
            Run(("ip", "-n", ns, "link", "set", "dev", "lo", "up")),
            # A DC never forwards: the only way from dc1 to dc2 is their direct link, so a cut
            # really cuts (detours are the relays' job, at the application layer).
            Sysctl(ns, "net.ipv4.ip_forward", "0"),
        ]
    return steps


def veth_link_steps(plan: LabPlan, shaped: bool = True) -> list[Step]:
    """Inter-DC links as kernel veth pairs, shaped by `tc netem` (the `netem` emulator) or not at
    all (the `veth` emulator: for load tests where emulating delay would cost more CPU than what
    is measured)."""
    steps: list[Step] = []
    for link in plan.links:
        steps.append(Run(("ip", "link", "add", "name", link.a.device, "netns", str(link.a.namespace), "type", "veth",
                          "peer", "name", link.b.device, "netns", str(link.b.namespace))))
        if shaped:
            steps += [_tc(end, "qdisc", "replace", "dev", end.device, "root", *netem_args(link.delay_ms))
                      for end in (link.a, link.b)]
    return steps


def link_address_steps(plan: LabPlan) -> list[Step]:
    """Addresses for the inter-DC devices, whichever emulator made them, and bring them up."""
    steps: list[Step] = []
    for link in plan.links:
        for end in (link.a, link.b):
            steps += [
                _ip(end, "addr", "add", f"{end.ip}/{plan.prefix_len}", "dev", end.device),
                _ip(end, "link", "set", "dev", end.device, "up"),
            ]
    return steps


def management_steps(plan: LabPlan) -> list[Step]:
    steps: list[Step] = []
    for mgmt in plan.management:
        root, inner = mgmt.root, mgmt.dc_end
        steps += [
            Run(("ip", "link", "add", "name", root.device, "type", "veth", "peer", "name", inner.device,
                 "netns", str(inner.namespace))),
            # The root namespace may forward for other reasons (containers); never between DCs.
            Sysctl(None, f"net.ipv4.conf.{root.device}.forwarding", "0"),
            _ip(root, "addr", "add", f"{root.ip}/{plan.prefix_len}", "dev", root.device),
            _ip(root, "link", "set", "dev", root.device, "up"),
            _ip(inner, "addr", "add", f"{inner.ip}/{plan.prefix_len}", "dev", inner.device),
            _ip(inner, "link", "set", "dev", inner.device, "up"),
        ]
    return steps


def teardown_steps(plan: LabPlan) -> list[Step]:
    """Deleting a namespace deletes its veths, and a veth's peer goes with it; the root-side
    management devices are deleted explicitly in case a namespace was never created."""
    steps: list[Step] = [Run(("ip", "netns", "del", plan.namespace(dc))) for dc in plan.datacenters]
    steps += [Run(("ip", "link", "del", "dev", mgmt.root.device)) for mgmt in plan.management]
    return steps


def link_state_steps(link: Link, up: bool) -> list[Step]:
    return [_ip(end, "link", "set", "dev", end.device, "up" if up else "down") for end in (link.a, link.b)]


def netem_steps(link: Link, delay_ms: int, loss_percent: float) -> list[Step]:
    """Both ends, so the delay and the loss apply in each direction (as the `wire` emulator does)."""
    return [_tc(end, "qdisc", "replace", "dev", end.device, "root", *netem_args(delay_ms, loss_percent))
            for end in (link.a, link.b)]
