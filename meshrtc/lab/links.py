"""Failures on a running lab's inter-DC links: cut, heal, degrade, partition, and their status."""

from __future__ import annotations

import time
from dataclasses import dataclass

from meshrtc.lab import netns, steps
from meshrtc.lab.state import LabState, LinkShape, StateDir
from meshrtc.lab.topology import LabPlan, Link

WIRE_APPLY_TIMEOUT = 2.0  # seconds


def set_up(links: list[Link], up: bool) -> None:
    """Both ends down (or up): a cut link has no route at either end, so nothing is sent into it."""
    for link in links:
        netns.apply_all(steps.link_state_steps(link, up))


def cut(plan: LabPlan, a: str, b: str) -> None:
    set_up([plan.link(a, b)], up=False)


def heal(plan: LabPlan, a: str, b: str) -> None:
    set_up([plan.link(a, b)], up=True)


def partition(plan: LabPlan, dc: str) -> None:
    """All of `dc`'s inter-DC links down; its management link stays, so clients still reach it."""
    set_up(plan.links_of(dc), up=False)


def heal_all(plan: LabPlan, dc: str | None = None) -> None:
    set_up(plan.links_of(dc) if dc else list(plan.links), up=True)


def degrade(plan: LabPlan, state: LabState, state_dir: StateDir, a: str, b: str, *,
            loss_percent: float | None, delay_ms: int | None) -> LinkShape:
    """Change a link's delay and/or loss (each direction); what is not given stays as it is."""
    link = plan.link(a, b)
    shapes = state_dir.load_links()
    current = shapes.get(link.name, LinkShape(delay_ms=link.delay_ms))
    new = LinkShape(
        delay_ms=current.delay_ms if delay_ms is None else delay_ms,
        loss_percent=current.loss_percent if loss_percent is None else loss_percent,
    )
    if state.emulator == "veth":
        raise netns.LabNetworkError("this lab's links are plain veth pairs (emulator veth): they cannot be shaped")
    if state.emulator == "netem":
        netns.apply_all(steps.netem_steps(link, new.delay_ms, new.loss_percent))
    shapes[link.name] = new
    state_dir.save_links(shapes)
    if state.emulator == "wire":
        wait_until_applied(state_dir)
    return new


def wait_until_applied(state_dir: StateDir, timeout: float = WIRE_APPLY_TIMEOUT) -> None:
    """The wire emulator rereads the link table every 0.1 s; a degrade that returned before it
    did would let the caller's next packets cross with the old shape."""
    version = state_dir.links_version()
    deadline = time.monotonic() + timeout
    while state_dir.wire_applied_version() < version:
        if time.monotonic() > deadline:
            raise netns.LabNetworkError(f"the wire emulator did not apply the new link shape within {timeout:.0f} s "
                                        f"(is it running? see {state_dir.path / 'wire.log'})")
        time.sleep(0.01)


@dataclass(frozen=True)
class LinkStatus:
    name: str
    state: str  # "up", "down", "half-down" (one end only), "missing"
    delay_ms: int
    loss_percent: float
    frames: dict[str, dict[str, int]] | None = None  # wire emulator counters per direction


def link_status(plan: LabPlan, state_dir: StateDir) -> list[LinkStatus]:
    shapes = state_dir.load_links()
    frames = state_dir.load_wire_stats()
    result = []
    for link in plan.links:
        ends = [netns.device_state(end) for end in (link.a, link.b)]
        if not all(end.exists for end in ends):
            text = "missing"
        elif all(end.admin_up for end in ends):
            text = "up"
        elif not any(end.admin_up for end in ends):
            text = "down"
        else:
            text = "half-down"
        shape = shapes.get(link.name, LinkShape(delay_ms=link.delay_ms))
        result.append(LinkStatus(link.name, text, shape.delay_ms, shape.loss_percent, frames.get(link.name)))
    return result
