"""The lab's plan: namespaces, veth names, addresses and delays for N datacenters.

Pure: nothing here touches the system. `netns.py` carries the plan out.

Addresses come from 198.18.0.0/15 (RFC 2544, set aside for network benchmarking): it is never
routed on the internet and rarely used on a host, so a lab cannot shadow the machine's own
networks. Each lab has a *slot* (0-255) so that several labs (an operator's and a test run's)
can exist side by side: the management subnets, which live in the root namespace, are
`198.18.<slot>.0/24`; the inter-DC links, which only exist inside the DC namespaces, are
`198.19.<slot>.0/24`. Every link is a /30 of its own.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.errors import ToolError

MAX_DATACENTERS = 9  # 36 links still fit one /24 of /30s; more DCs than this is not a lab anymore
MAX_SLOT = 255
DEFAULT_DELAY_MS = 20
# dc1-dc2 is the slow direct path: 30 ms one way, while the detour dc1→dc3→dc2 costs 40 ms, so a
# relay that reroutes on a cut pays a visible but small price.
DEFAULT_DELAYS_MS: dict[tuple[str, str], int] = {("dc1", "dc2"): 30, ("dc1", "dc3"): 20, ("dc2", "dc3"): 20}
MGMT_DEVICE = "mgmt"  # the management veth's name inside every DC namespace

# Ports every DC uses inside its own namespace (each namespace has its own port space).
SIGNAL_PORT = 7880
NATS_PORT = 4222
NATS_HTTP_PORT = 8222
NATS_LEAF_PORT = 7422
RELAY_PORT = 7900


class LabPlanError(ToolError, ValueError):
    pass


@dataclass(frozen=True)
class Endpoint:
    """One end of a veth pair: the device `device` in namespace `namespace` (None: the root one)."""

    dc: str
    namespace: str | None
    device: str
    ip: str


@dataclass(frozen=True)
class Link:
    """A direct inter-DC link (a veth pair between two DC namespaces) with its one-way netem delay."""

    a: Endpoint
    b: Endpoint
    delay_ms: int

    @property
    def name(self) -> str:
        return f"{self.a.dc}-{self.b.dc}"

    def end_in(self, dc: str) -> Endpoint:
        if dc == self.a.dc:
            return self.a
        if dc == self.b.dc:
            return self.b
        raise LabPlanError(f"link {self.name} does not touch {dc}")

    def other(self, dc: str) -> Endpoint:
        return self.b if self.end_in(dc) is self.a else self.a


@dataclass(frozen=True)
class ManagementLink:
    """The veth from the root namespace into one DC: how operators and tests reach that DC, never
    a path between DCs (the root side does not forward, DCs have no route to each other's)."""

    root: Endpoint
    dc_end: Endpoint


@dataclass(frozen=True)
class LabPlan:
    name: str
    slot: int
    datacenters: tuple[str, ...]
    links: tuple[Link, ...]
    management: tuple[ManagementLink, ...]
    prefix_len: int = 30
    _by_pair: dict[frozenset[str], Link] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_pair.update({frozenset((link.a.dc, link.b.dc)): link for link in self.links})

    @property
    def hub(self) -> str:
        return self.datacenters[0]

    def check_dc(self, dc: str) -> str:
        if dc not in self.datacenters:
            raise LabPlanError(f"unknown datacenter {dc!r} (the lab has {', '.join(self.datacenters)})")
        return dc

    def namespace(self, dc: str) -> str:
        return namespace_name(self.name, self.check_dc(dc))

    def link(self, a: str, b: str) -> Link:
        self.check_dc(a)
        self.check_dc(b)
        if a == b:
            raise LabPlanError(f"a link needs two different datacenters, got {a} twice")
        return self._by_pair[frozenset((a, b))]

    def links_of(self, dc: str) -> list[Link]:
        self.check_dc(dc)
        return [link for link in self.links if dc in (link.a.dc, link.b.dc)]

    def mgmt(self, dc: str) -> ManagementLink:
        self.check_dc(dc)
        return next(m for m in self.management if m.dc_end.dc == dc)

    def url(self, dc: str) -> str:
        return f"ws://{self.mgmt(dc).dc_end.ip}:{SIGNAL_PORT}"

    def nats_url(self, dc: str) -> str:
        return f"nats://{self.mgmt(dc).dc_end.ip}:{NATS_PORT}"

    def nats_monitor_url(self, dc: str) -> str:
        return f"http://{self.mgmt(dc).dc_end.ip}:{NATS_HTTP_PORT}"


def namespace_name(lab_name: str, dc: str) -> str:
    return f"{lab_name}-{dc}"


def root_device_name(slot: int, dc: str) -> str:
    return f"mlab{slot}-{dc}"  # at most 11 characters (IFNAMSIZ allows 15)


def dc_names(count: int) -> tuple[str, ...]:
    if not 2 <= count <= MAX_DATACENTERS:
        raise LabPlanError(f"a lab has 2 to {MAX_DATACENTERS} datacenters, not {count}")
    return tuple(f"dc{index}" for index in range(1, count + 1))


def plan_lab(
    datacenters: int,
    *,
    name: str = "meshrtc",
    slot: int = 0,
    delays_ms: Mapping[tuple[str, str], int] | None = None,
) -> LabPlan:
    """The whole lab for `datacenters` DCs. `delays_ms` overrides the defaults per pair (either order)."""
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", name):
        raise LabPlanError(f"lab name {name!r}: lower-case letters, digits and '-', starting with a letter")
    if not 0 <= slot <= MAX_SLOT:
        raise LabPlanError(f"slot {slot} is outside 0..{MAX_SLOT}")
    dcs = dc_names(datacenters)
    wanted = {_pair(a, b): ms for (a, b), ms in (delays_ms or {}).items()}
    for pair in wanted:
        for dc in pair:
            if dc not in dcs:
                raise LabPlanError(f"delay for unknown datacenter {dc!r} (the lab has {', '.join(dcs)})")
    link_net = ipaddress.ip_network(f"198.19.{slot}.0/24")
    mgmt_net = ipaddress.ip_network(f"198.18.{slot}.0/24")
    links: list[Link] = []
    for index, (a, b) in enumerate((a, b) for i, a in enumerate(dcs) for b in dcs[i + 1:]):
        first, second = _host_pair(link_net, index)
        delay = wanted.get((a, b), DEFAULT_DELAYS_MS.get((a, b), DEFAULT_DELAY_MS))
        links.append(Link(
            a=Endpoint(a, namespace_name(name, a), f"to-{b}", first),
            b=Endpoint(b, namespace_name(name, b), f"to-{a}", second),
            delay_ms=delay,
        ))
    management = []
    for index, dc in enumerate(dcs):
        root_ip, dc_ip = _host_pair(mgmt_net, index)
        management.append(ManagementLink(
            root=Endpoint(dc, None, root_device_name(slot, dc), root_ip),
            dc_end=Endpoint(dc, namespace_name(name, dc), MGMT_DEVICE, dc_ip),
        ))
    return LabPlan(name=name, slot=slot, datacenters=dcs, links=tuple(links), management=tuple(management))


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if _dc_index(a) < _dc_index(b) else (b, a)


def _dc_index(dc: str) -> int:
    match = re.fullmatch(r"dc(\d+)", dc)
    if not match:
        raise LabPlanError(f"datacenter names are dc1, dc2, …, not {dc!r}")
    return int(match.group(1))


def _host_pair(network: ipaddress.IPv4Network | ipaddress.IPv6Network, index: int) -> tuple[str, str]:
    base = int(network.network_address) + 4 * index
    return str(ipaddress.ip_address(base + 1)), str(ipaddress.ip_address(base + 2))


# -- parsing operator input ---------------------------------------------------------------------


def parse_duration_ms(text: str) -> int:
    """`30ms`, `1s`, `30` (milliseconds) → whole milliseconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*", text)
    if not match:
        raise LabPlanError(f"expected a delay like 30ms or 1s, got {text!r}")
    value = float(match.group(1)) * (1000 if match.group(2) == "s" else 1)
    if value > 60_000:
        raise LabPlanError(f"delay {text!r} is over a minute")
    return round(value)


def parse_percent(text: str) -> float:
    """`30%` or `30` → 30.0 (a percentage, 0-100)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%?\s*", text)
    if not match or float(match.group(1)) > 100:
        raise LabPlanError(f"expected a percentage like 30%, got {text!r}")
    return float(match.group(1))


def parse_delay_spec(text: str) -> tuple[tuple[str, str], int]:
    """`dc1-dc2=30ms` → (("dc1", "dc2"), 30)."""
    match = re.fullmatch(r"\s*(dc\d+)-(dc\d+)\s*=\s*(.+)", text)
    if not match:
        raise LabPlanError(f"expected dcA-dcB=DELAY (e.g. dc1-dc2=30ms), got {text!r}")
    a, b = match.group(1), match.group(2)
    if a == b:
        raise LabPlanError(f"{text!r}: a link needs two different datacenters")
    return _pair(a, b), parse_duration_ms(match.group(3))
