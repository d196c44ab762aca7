"""The `wire` link emulator: inter-DC links as pairs of TAP devices joined by this process.

For kernels without `sch_netem` (some VMs, including the project's CI machines): each end of a
link is a TAP device moved into its DC's namespace under the same name a veth would have
(`to-dc2` in dc1's namespace); this process copies Ethernet frames between the two ends
through a `shaper.Direction`, which applies the link's delay and loss. Cuts are still made in
the kernel (`ip link set dev to-dc2 down`), so a cut link is unreachable exactly as a veth is.

Run detached by `meshrtc lab up` as `python -m meshrtc.lab.wire STATE_DIR`; it creates the
TAP devices, writes `wire.ready`, then serves until SIGTERM. The TAP devices vanish with it.
It rereads `links.json` (delay, loss) whenever the file changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from meshrtc.lab.shaper import Direction, Shape
from meshrtc.lab.state import StateDir
from meshrtc.lab.topology import Endpoint, LabPlan

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MAX_FRAME = 65536
RELOAD_INTERVAL_S = 0.1
STATS_INTERVAL_S = 1.0
WIRE_NICE = -10
TAP_QUEUE_FRAMES = 10_000


def open_tap(name: str) -> int:
    """A TAP device `name` in the root namespace, alive as long as the returned fd is open."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def move_into_namespace(tmp_name: str, end: Endpoint) -> None:
    # A TAP's queue (500 frames by default) holds what the DC sent until this process reads it:
    # a longer one rides out this process being descheduled, so only the link's loss drops frames.
    subprocess.run(["ip", "link", "set", "dev", tmp_name, "txqueuelen", str(TAP_QUEUE_FRAMES)], check=True)
    subprocess.run(["ip", "link", "set", "dev", tmp_name, "netns", str(end.namespace)], check=True)
    subprocess.run(["ip", "-n", str(end.namespace), "link", "set", "dev", tmp_name, "name", end.device], check=True)


@dataclass
class EmulatedLink:
    name: str
    fd_a: int
    fd_b: int
    shape: Shape
    a_to_b: Direction = field(default_factory=Direction)
    b_to_a: Direction = field(default_factory=Direction)


class Wire:
    def __init__(self, plan: LabPlan, state_dir: StateDir) -> None:
        self.plan = plan
        self.state_dir = state_dir
        self.links: list[EmulatedLink] = []
        self._by_fd: dict[int, tuple[EmulatedLink, Direction, int]] = {}
        self._links_version = 0
        self._running = True

    def create_devices(self) -> None:
        shapes = self.state_dir.load_links()
        for index, link in enumerate(self.plan.links):
            fds = []
            for side, end in (("a", link.a), ("b", link.b)):
                tmp_name = f"w{self.plan.slot}l{index}{side}"
                fd = open_tap(tmp_name)
                fds.append(fd)
                move_into_namespace(tmp_name, end)
            shape = shapes[link.name].shape() if link.name in shapes else Shape(link.delay_ms)
            emulated = EmulatedLink(link.name, fds[0], fds[1], shape)
            self.links.append(emulated)
            self._by_fd[fds[0]] = (emulated, emulated.a_to_b, fds[1])
            self._by_fd[fds[1]] = (emulated, emulated.b_to_a, fds[0])

    def reload_shapes(self) -> None:
        try:
            version = self.state_dir.links_version()
        except FileNotFoundError:
            return
        if version == self._links_version:
            return
        self._links_version = version
        shapes = self.state_dir.load_links()
        for link in self.links:
            if link.name in shapes:
                link.shape = shapes[link.name].shape()
        # `meshrtc lab degrade` returns once it reads this: frames sent after it see the new shape.
        self.state_dir.save_wire_applied(version)

    def write_stats(self) -> None:
        """Per link and direction frame counters, for `meshrtc lab status` (loss made vs configured)."""
        stats = {link.name: {"a_to_b": link.a_to_b.counters(), "b_to_a": link.b_to_a.counters()}
                 for link in self.links}
        self.state_dir.save_wire_stats(stats)

    def stop(self, *_: object) -> None:
        self._running = False

    def serve(self) -> None:
        next_reload = next_stats = 0.0
        while self._running:
            now = time.monotonic()
            if now >= next_reload:
                self.reload_shapes()
                next_reload = now + RELOAD_INTERVAL_S
            if now >= next_stats:
                self.write_stats()
                next_stats = now + STATS_INTERVAL_S
            timeout = next_reload - now
            for link in self.links:
                for direction in (link.a_to_b, link.b_to_a):
                    deadline = direction.next_deadline()
                    if deadline is not None:
                        timeout = min(timeout, deadline - now)
            try:
                readable, _, _ = select.select(list(self._by_fd), [], [], max(0.0, timeout))
            except InterruptedError:
                continue
            now = time.monotonic()
            for fd in readable:
                link, direction, _ = self._by_fd[fd]
                self._drain(fd, direction, now, link.shape)
            self._deliver(now)

    def _drain(self, fd: int, direction: Direction, now: float, shape: Shape) -> None:
        for _ in range(64):  # bounded so one busy link cannot starve the others
            try:
                frame = os.read(fd, MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # the device went down under us (a cut): nothing to read
            direction.offer(frame, now, shape)

    def _deliver(self, now: float) -> None:
        for link in self.links:
            for direction, out_fd in ((link.a_to_b, link.fd_b), (link.b_to_a, link.fd_a)):
                for frame in direction.pop_due(now):
                    try:
                        os.write(out_fd, frame)
                    except OSError:  # the far end is down (cut): the frame is lost, as on a cable
                        direction.undeliverable += 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m meshrtc.lab.wire STATE_DIR", file=sys.stderr)
        return 2
    state_dir = StateDir(Path(args[0]))
    wire = Wire(state_dir.load().plan(), state_dir)
    # The emulator stands in for the network: if it queues behind busy services, every inter-DC
    # packet gets delay that is not the link's. Only what traffic it carries costs CPU.
    with contextlib.suppress(OSError):
        os.nice(WIRE_NICE)
    signal.signal(signal.SIGTERM, wire.stop)
    signal.signal(signal.SIGINT, wire.stop)
    wire.create_devices()
    state_dir.wire_ready_file.write_text(str(os.getpid()))
    print(f"wire: {len(wire.links)} links ready", flush=True)
    wire.serve()
    wire.write_stats()
    print("wire: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
