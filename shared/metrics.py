"""Prometheus metrics of a service process, collected on scrape (pull): nothing is updated on
the packet path; the collector reads the counters the services already keep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

Snapshot = Callable[[], dict[str, float]]

# name -> (type, help). Counters end in _total.
DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "participants": ("gauge", "participants hosted by this node"),
    "tracks": ("gauge", "published tracks hosted by this node"),
    "sessions": ("gauge", "client sessions (signal) or sessions (media)"),
    "packets_in_total": ("counter", "RTP packets received from publishers"),
    "packets_forwarded_total": ("counter", "RTP packets sent to subscribers"),
    "bytes_in_total": ("counter", "RTP bytes received from publishers (plaintext)"),
    "bytes_forwarded_total": ("counter", "SRTP bytes sent to subscribers"),
    "packets_dropped_total": ("counter", "RTP packets dropped (malformed, not forwardable, layer filtered)"),
    "relay_streams": ("gauge", "tracks the relay forwards (exported from this DC or delivered to it)"),
    "relay_local_subscribers": ("gauge", "media nodes of this DC subscribed to remote tracks through the relay"),
    "relay_links_up": ("gauge", "links to peer relays that are up or degraded"),
    "relay_dropped_total": ("counter", "relay datagrams dropped (malformed, forged, replayed, unroutable, blocked)"),
    "relay_events_dropped_total": ("counter", "relay events not queued because the bus outbox was full"),
    "relay_wan_data_packets_in_total": ("counter", "RTP/RTCP datagrams received from peer relays"),
    "relay_wan_data_packets_out_total": ("counter", "RTP/RTCP datagrams sent to peer relays"),
    "relay_wan_data_bytes_in_total": ("counter", "RTP/RTCP bytes received from peer relays (sealed)"),
    "relay_wan_data_bytes_out_total": ("counter", "RTP/RTCP bytes sent to peer relays (sealed)"),
    "relay_wan_ctl_packets_in_total": ("counter", "control datagrams (probes, subscribe, keyframe) from peer relays"),
    "relay_wan_ctl_packets_out_total": ("counter", "control datagrams to peer relays"),
    "relay_wan_ctl_bytes_in_total": ("counter", "control bytes from peer relays"),
    "relay_wan_ctl_bytes_out_total": ("counter", "control bytes to peer relays"),
    "event_loop_lag_seconds": ("gauge", "how late the event loop ran a 100 ms timer, last sample"),
    "uptime_seconds": ("gauge", "seconds since the process started"),
}


class ServiceCollector(Collector):
    def __init__(self, service: str, node: str, snapshot: Snapshot, lag: EventLoopLag) -> None:
        self.labels = {"service": service, "node": node}
        self.snapshot = snapshot
        self.lag = lag
        self.started = time.time()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        values = dict(self.snapshot())
        values["event_loop_lag_seconds"] = self.lag.last
        values["uptime_seconds"] = time.time() - self.started
        for name, value in sorted(values.items()):
            kind, text = DESCRIPTIONS.get(name, ("gauge", name))
            family_cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = family_cls(f"meshrtc_{name.removesuffix('_total')}" if kind == "counter"
                                else f"meshrtc_{name}", text, labels=list(self.labels))
            family.add_metric(list(self.labels.values()), float(value))
            yield family


class EventLoopLag:
    """Measures event-loop lag: a loop that cannot run a timer on time cannot forward on time."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.last = 0.0
        self.worst = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            self.last = max(0.0, loop.time() - start - self.interval)
            self.worst = max(self.worst, self.last)


class ServiceMetrics:
    def __init__(self, service: str, node: str, snapshot: Snapshot) -> None:
        self.lag = EventLoopLag()
        self.registry = CollectorRegistry()
        self.registry.register(ServiceCollector(service, node, snapshot, self.lag))

    def render(self) -> bytes:
        return generate_latest(self.registry)
