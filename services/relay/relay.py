"""The relay's control side: keeps the forwarder's tables right. Async, never on the packet path.

* Link loop (every probe interval): probe each peer, evaluate links (LinkStateChanged events on a
  change), recompute routes, re-plan the WAN copies of every exported stream whose route moved.
* Control loop (every 250 ms): expire soft state; refresh WAN SUBSCRIBE to each origin DC (every
  second, along the current route, so refreshes reroute with the media) and track exports from
  the publisher's node (`ctl.media.<node>.export`, every second, ttl 0 once no longer needed).
* `subscribe()` serves a local node's `RelaySubscribe`; `on_control()` receives probes, echoes
  and WAN SUBSCRIBE from the forwarder.

Bus access is injected (`request`, `emit`), so this module holds no NATS code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from services.relay.crypto import LinkCipher
from services.relay.forwarder import Addr, Forwarder, StreamState, WanPlan
from services.relay.probes import LinkMonitor, ProbeError
from services.relay.routing import LinkView, RoutePolicy, Router, merge_routes
from services.relay.subscriptions import Subscriptions, TrackRef
from services.relay.usage import RelayUsage
from services.relay.wire import Kind, WanSubscribe, deliver_mask
from shared.contracts.control import ControlDecodeError
from shared.contracts.relay import (
    LinkInfo,
    RelayStats,
    RelaySubscribe,
    RelaySubscribed,
    TrackExport,
    TrackExported,
    media_export_subject,
    parse_hostport,
)
from shared.events import EventPayload, LinkStateChanged, LinkStatus
from shared.relay_wire import stream_id

log = logging.getLogger("meshrtc.relay")

Request = Callable[[str, bytes, float], Awaitable[bytes]]
Emit = Callable[[EventPayload], None]

CONTROL_TICK_S = 0.25
REFRESH_S = 1.0  # WAN SUBSCRIBE and export refresh period
WAN_TTL_S = 3.5  # an origin forgets a destination DC after this long without a refresh
EXPORT_TTL_S = 5.0
EXPORT_TIMEOUT_S = 1.0


class Relay:
    def __init__(self, dc: str, dcs: list[str], link_keys: dict[str, bytes], peer_addrs: dict[str, Addr],
                 wan_sock: socket.socket, local_sock: socket.socket, relay_local: str, request: Request, emit: Emit,
                 policy: RoutePolicy | None = None, probe_interval: float = 0.1) -> None:
        self.dc = dc
        self.dcs = dcs
        self.index = dcs.index(dc)
        self.relay_local = relay_local
        self.request = request
        self.emit = emit
        peers = {dcs.index(name): name for name in peer_addrs}
        ciphers = {i: LinkCipher(link_keys[name], self.index, i) for i, name in peers.items()}
        self.forwarder = Forwarder(self.index, len(dcs), wan_sock, local_sock, ciphers,
                                   {i: peer_addrs[name] for i, name in peers.items()}, self.on_control)
        self.monitor = LinkMonitor(self.index, sorted(peers), interval=probe_interval)
        self.router = Router(self.index, len(dcs), policy or RoutePolicy())
        self.subscriptions = Subscriptions()
        self.usage = RelayUsage()
        self.refs: dict[int, TrackRef] = {}  # streams in the forwarder -> what they are
        self._last_refresh: dict[int, float] = {}
        self._exporting: set[int] = set()
        self._failing_exports: set[int] = set()  # logged once until an export succeeds again
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self.control_errors = 0
        self.export_failures = 0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.forwarder.wan_sock.fileno(), self.forwarder.drain_wan)
        loop.add_reader(self.forwarder.local_sock.fileno(), self.forwarder.drain_local)
        self._tasks = [asyncio.create_task(self._link_loop(), name="relay-links"),
                       asyncio.create_task(self._control_loop(), name="relay-control")]

    async def stop(self, withdraw_timeout: float = 1.0) -> None:
        """Tell origins and publishers we are going (best effort; otherwise it all lapses), stop."""
        for stream, ref in list(self.refs.items()):
            self._withdraw(stream, ref)
        if self._background:
            await asyncio.wait(list(self._background), timeout=withdraw_timeout)
        loop = asyncio.get_running_loop()
        for sock in (self.forwarder.wan_sock, self.forwarder.local_sock):
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(sock.fileno())
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- links and routes ----------------------------------------------------------------

    async def _link_loop(self) -> None:
        interval = self.monitor.interval
        while True:
            started = time.monotonic()
            self.link_tick(started)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    def link_tick(self, now: float) -> None:
        for peer in self.monitor.peers:
            self.forwarder.send_link(Kind.PROBE, peer, self.monitor.make_probe(peer, now))
        for peer, old, new in self.monitor.evaluate(now):
            metrics = self.monitor.metrics(peer, now)
            log.warning("link %s -> %s: %s -> %s (rtt %.1f ms, loss %.0f%%)", self.dc, self.dcs[peer], old.value,
                        new.value, metrics.rtt_ms, metrics.loss * 100)
            self.emit(LinkStateChanged(src_dc=self.dc, dst_dc=self.dcs[peer], status=new,
                                       rtt_ms=round(metrics.rtt_ms, 2), loss=round(metrics.loss, 4)))
        view = LinkView(self.monitor.table(now), self.monitor.remote_tables(now))
        changed = self.router.update(view, now)
        if not changed:
            return
        for dest, route in changed.items():
            self.forwarder.routes[dest] = route
            log.info("route %s -> %s: %s", self.dc, self.dcs[dest],
                     " -> ".join(self.dcs[i] for i in route) if route else "none")
        moved = {self.dcs[dest] for dest in changed}
        for stream, ref in list(self.refs.items()):
            if ref.origin_dc == self.dc:
                self._apply(stream)
                interest = self.subscriptions.get(stream)
                if interest is not None and moved.intersection(interest.remote):
                    self.forwarder.ask_keyframe(stream)

    def on_control(self, kind: int, peer: int, stream: int, layer: int, body: bytes) -> None:
        """Called by the forwarder for authenticated control datagrams (peer = sender or requester)."""
        now = time.monotonic()
        try:
            if kind == Kind.PROBE:
                self.forwarder.send_link(Kind.PROBE_REPLY, peer, self.monitor.on_probe(peer, body, now))
            elif kind == Kind.PROBE_REPLY:
                self.monitor.on_reply(peer, body, now)
            elif kind == Kind.SUBSCRIBE:
                self._on_wan_subscribe(peer, stream, WanSubscribe.decode(body), now)
        except (ProbeError, ControlDecodeError, ValueError) as exc:
            self.control_errors += 1
            self.forwarder.drops["bad_control"] += 1
            log.debug("bad control datagram from %s: %s", self.dcs[peer], exc)

    # -- subscriptions -------------------------------------------------------------------

    def subscribe(self, request: RelaySubscribe) -> RelaySubscribed:
        if request.origin_dc not in self.dcs:
            raise ValueError(f"unknown origin datacenter {request.origin_dc!r} (known: {', '.join(self.dcs)})")
        subscriber = parse_hostport(request.deliver_to)
        stream = stream_id(request.track_sid)
        ref = TrackRef(request.track_sid, request.room, request.project, request.origin_dc, request.origin_node)
        if self.subscriptions.add_local(stream, ref, subscriber, request.ttl_s, time.monotonic()):
            self._apply(stream)
        return RelaySubscribed(relay_local=self.relay_local)

    def _on_wan_subscribe(self, requester: int, stream: int, message: WanSubscribe, now: float) -> None:
        if stream_id(message.track_sid) != stream:
            raise ValueError(f"SUBSCRIBE for {message.track_sid} carries another stream id")
        ref = TrackRef(message.track_sid, message.room, message.project, self.dc, message.origin_node)
        if self.subscriptions.add_remote(stream, ref, self.dcs[requester], message.ttl_s, now):
            self._apply(stream)

    def _apply(self, stream: int) -> None:
        """Make the forwarder's state for `stream` match the subscriptions (no I/O but sends)."""
        interest = self.subscriptions.get(stream)
        state = self.forwarder.streams.get(stream)
        if interest is None:
            if state is not None:
                del self.forwarder.streams[stream]
                self.usage.retire(state)
                self._withdraw(stream, self.refs.pop(stream))
            return
        ref = interest.ref
        if state is None:
            state = StreamState(stream, ref.track_sid, self.dcs.index(ref.origin_dc), ref.room, ref.project)
            self.forwarder.streams[stream] = state
            self.refs[stream] = ref
            self._refresh(stream, ref, time.monotonic())
        elif self.refs[stream] != ref:  # the track moved to another node (or room details changed)
            before, self.refs[stream] = self.refs[stream], ref
            state.room, state.project = ref.room, ref.project
            if before.origin_node != ref.origin_node:
                if ref.origin_dc == self.dc:  # (a destination relay just refreshes; its origin moves)
                    self._spawn(self._export(stream, before, 0))
                self._refresh(stream, ref, time.monotonic())
        state.local_targets = tuple(interest.local)
        if ref.origin_dc == self.dc:
            routes = {dest: route for name in interest.remote
                      if (route := self.forwarder.routes[dest := self.dcs.index(name)]) is not None}
            state.wan_plans = tuple(WanPlan(route, deliver_mask(dests)) for route, dests in merge_routes(routes))

    def _refresh(self, stream: int, ref: TrackRef, now: float) -> None:
        self._last_refresh[stream] = now
        if ref.origin_dc == self.dc:
            if stream not in self._exporting:
                self._exporting.add(stream)
                self._spawn(self._export(stream, ref, EXPORT_TTL_S))
        else:
            self._send_wan_subscribe(stream, ref, WAN_TTL_S)

    def _withdraw(self, stream: int, ref: TrackRef) -> None:
        self._last_refresh.pop(stream, None)
        if ref.origin_dc == self.dc:
            self._spawn(self._export(stream, ref, 0))
        else:
            self._send_wan_subscribe(stream, ref, 0)

    def _send_wan_subscribe(self, stream: int, ref: TrackRef, ttl_s: float) -> None:
        body = WanSubscribe(track_sid=ref.track_sid, room=ref.room, project=ref.project, origin_node=ref.origin_node,
                            ttl_s=ttl_s).encode()
        self.forwarder.send_toward(Kind.SUBSCRIBE, self.dcs.index(ref.origin_dc), stream, 0, body)

    async def _export(self, stream: int, ref: TrackRef, ttl_s: float) -> None:
        request = TrackExport(track_sid=ref.track_sid, deliver_to=self.relay_local, ttl_s=ttl_s)
        try:
            raw = await self.request(media_export_subject(ref.origin_node), request.encode(), EXPORT_TIMEOUT_S)
            source = parse_hostport(TrackExported.decode(raw).source)
            state = self.forwarder.streams.get(stream)
            if state is not None and ttl_s > 0:
                state.keyframe_to = source
        except Exception as exc:  # the node may be gone; the next refresh retries
            self.export_failures += 1
            first = stream not in self._failing_exports
            self._failing_exports.add(stream)
            log.log(logging.WARNING if first else logging.DEBUG, "export of %s from node %s failed: %s",
                    ref.track_sid, ref.origin_node, exc)
        else:
            self._failing_exports.discard(stream)
        finally:
            if ttl_s > 0:
                self._exporting.discard(stream)

    async def _control_loop(self) -> None:
        while True:
            await asyncio.sleep(CONTROL_TICK_S)
            self.control_tick(time.monotonic())

    def control_tick(self, now: float) -> None:
        for stream in self.subscriptions.expire(now):
            self._apply(stream)
        for stream, ref in list(self.refs.items()):
            if now - self._last_refresh.get(stream, 0.0) >= REFRESH_S:
                self._refresh(stream, ref, now)

    # -- reporting -----------------------------------------------------------------------

    def stats(self, loop_lag_ms: float = 0.0, loop_lag_worst_ms: float = 0.0) -> RelayStats:
        now = time.monotonic()
        links = [LinkInfo(src_dc=self.dc, dst_dc=self.dcs[peer], status=m.status.value, rtt_ms=round(m.rtt_ms, 2),
                          loss=round(m.loss, 4)) for peer, m in sorted(self.monitor.table(now).items())]
        for peer, (received, table) in sorted(self.monitor.gossip.items()):
            links += [LinkInfo(src_dc=self.dcs[peer], dst_dc=self.dcs[dst], status=m.status.value,
                               rtt_ms=round(m.rtt_ms, 2), loss=round(m.loss, 4), age_s=round(now - received, 3))
                      for dst, m in sorted(table.items())]
        return RelayStats(
            dc=self.dc, node_id="", relay_local=self.relay_local, links=links,
            paths={self.dcs[dest]: [self.dcs[i] for i in route] for dest, route in sorted(self.router.routes.items())},
            peer_counters={self.dcs[peer]: link.counters() for peer, link in sorted(self.forwarder.peers.items())},
            drops=dict(self.forwarder.drops), streams=len(self.forwarder.streams),
            local_subscribers=self.subscriptions.local_count, loop_lag_ms=loop_lag_ms,
            loop_lag_worst_ms=loop_lag_worst_ms)

    def links_up(self) -> int:
        return sum(link.status != LinkStatus.DOWN for link in self.monitor.links.values())
