"""Track analytics: per published track and per subscriber leg, snapshots of what this node
receives and sends, turned into `TrackTelemetry` / `SubscriptionTelemetry` payloads.

Nothing here runs per packet. The hot path already keeps cumulative counters (ReceiveStats per
incoming stream, OutgoingTrack per subscriber leg); subscriber RTCP (receiver reports, NACK,
PLI, FIR) is folded into a `LegStats` as it arrives; the track's periodic tick calls
`TrackAnalytics.accumulate` to credit each leg with the frames of the layer it is forwarding;
`TrackAnalytics.snapshot` turns the counters into rates over the interval since the last one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypedDict

from shared.events import (
    LayerStats,
    LayerSwitch,
    LayerSwitchReason,
    SubscriptionTelemetry,
    TrackKind,
    TrackTelemetry,
)

from .receive_stats import ReceiveStats
from .rtp import rtcp

if TYPE_CHECKING:
    from .track import PublishedTrack

__all__ = ["RTP_HEADER_BYTES", "LegCounters", "LegStats", "TrackAnalytics", "TrackSample", "rate", "track_telemetry"]

RTP_HEADER_BYTES = 12  # fixed header; what getStats leaves out of bytesReceived
SENDING_SMOOTHING = 0.5  # weight of the newest tick (0.5 s) in a leg's sending rate
MAX_SWITCHES = 50  # kept per leg between two samples (a flapping leg must not grow memory)


def rate(delta: float, seconds: float) -> float:
    return delta / seconds if seconds > 0 else 0.0


@dataclass(slots=True)
class LegStats:
    """What one subscriber's receiver told us, and the layer decisions taken for it."""

    nacks: int = 0
    plis: int = 0
    firs: int = 0
    loss: float = 0.0  # fraction lost in the last receiver report
    jitter_ms: float = 0.0
    rtt_ms: float = 0.0
    remb_bps: int = 0
    sending_bps: float = 0.0  # payload bitrate we send, smoothed over the last second or so
    sent_mark: int = -1  # payload bytes at the previous accumulate
    frames: int = 0  # frames of the forwarded layer while forwarding (credited each tick)
    switches: list[LayerSwitch] = field(default_factory=list)

    def on_report(self, block: rtcp.ReportBlock, clock_rate: int, rtt_ms: float | None) -> None:
        self.loss = block.fraction_lost / 256.0
        self.jitter_ms = block.jitter * 1000.0 / clock_rate if clock_rate else 0.0
        if rtt_ms is not None:
            self.rtt_ms = rtt_ms

    def switched(self, from_layer: int, to_layer: int, reason: LayerSwitchReason) -> None:
        if from_layer == to_layer:
            return
        if len(self.switches) >= MAX_SWITCHES:
            del self.switches[0]
        self.switches.append(LayerSwitch(at_ms=int(time.time() * 1000), from_layer=from_layer, to_layer=to_layer,
                                         reason=reason))

    def take_switches(self) -> list[LayerSwitch]:
        taken, self.switches = self.switches, []
        return taken


class LegCounters(Protocol):
    """The parts of a subscriber leg a snapshot reads (track.Subscription)."""

    @property
    def leg_key(self) -> str: ...
    @property
    def bytes_sent(self) -> int: ...  # RTP payload bytes
    @property
    def packets_sent(self) -> int: ...
    @property
    def forwarding_layer(self) -> int: ...  # -1 while nothing is forwarded (paused, not started)


@dataclass(slots=True)
class TrackSample:
    """Rates of one interval; the caller builds the telemetry payloads from it."""

    interval_ms: int
    bitrate_bps: float
    fps: float
    frames_total: int
    packet_loss: float
    jitter_ms: float
    layers: list[LayerStats]
    legs: dict[str, tuple[float, float]]  # leg key -> (bitrate bps, fps)


@dataclass(slots=True)
class TrackAnalytics:
    """Per published track: the marks the next interval is measured from."""

    kind: TrackKind
    clock_rate: int
    _at: float = field(default_factory=time.monotonic)
    _bytes: int = 0
    _stream_marks: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # ssrc -> expected, received, frames
    _accumulated_at: float = 0.0
    _credited: dict[int, int] = field(default_factory=dict)  # ssrc -> frames already credited to legs
    _leg_marks: dict[str, tuple[int, int]] = field(default_factory=dict)  # leg -> bytes, frames

    def accumulate(self, now: float, streams: Mapping[int, ReceiveStats],
                   legs: Iterable[tuple[LegStats, int, int]]) -> None:
        """Credit each forwarding leg with the frames its layer produced since the last call,
        and update its sending rate. `streams`: layer -> its stream; `legs`: (stats, layer being
        forwarded or -1, payload bytes sent so far)."""
        fresh: dict[int, int] = {}
        for layer, stream in streams.items():
            before = self._credited.get(stream.ssrc, stream.frames)
            fresh[layer] = stream.frames - before
            self._credited[stream.ssrc] = stream.frames
        seconds = now - self._accumulated_at
        self._accumulated_at = now
        for stats, layer, sent in legs:
            if layer >= 0:
                stats.frames += fresh.get(layer, 0)
            if seconds > 0 and stats.sent_mark >= 0:
                rate_now = rate(8 * (sent - stats.sent_mark), seconds)
                stats.sending_bps += SENDING_SMOOTHING * (rate_now - stats.sending_bps)
            stats.sent_mark = sent

    def snapshot(self, now: float, bytes_total: int, streams: Mapping[int, ReceiveStats], active: Iterable[int],
                 legs: Iterable[tuple[LegCounters, LegStats]]) -> TrackSample:
        seconds = max(1e-3, now - self._at)
        self._at = now
        active_layers = set(active)
        layers: list[LayerStats] = []
        worst_loss = worst_jitter = 0.0
        best_fps, best_frames = 0.0, 0
        for layer in sorted(streams):
            stream = streams[layer]
            expected0, received0, frames0 = self._stream_marks.get(stream.ssrc, (0, 0, 0))
            self._stream_marks[stream.ssrc] = (stream.expected, stream.received, stream.frames)
            expected = stream.expected - expected0
            lost = expected - (stream.received - received0)
            if expected > 0 and lost > 0:
                worst_loss = max(worst_loss, lost / expected)
            worst_jitter = max(worst_jitter, stream.jitter * 1000.0 / self.clock_rate if self.clock_rate else 0.0)
            fps = rate(stream.frames - frames0, seconds)
            is_active = layer in active_layers
            layers.append(LayerStats(layer=layer, packets_per_s=round(rate(stream.received - received0, seconds), 2),
                                     fps=round(fps, 2), active=is_active))
            if is_active or not best_frames:
                best_fps, best_frames = fps, stream.frames
        bitrate = rate(8 * (bytes_total - self._bytes), seconds)
        self._bytes = bytes_total
        leg_rates: dict[str, tuple[float, float]] = {}
        marks: dict[str, tuple[int, int]] = {}
        for counters, stats in legs:
            key = counters.leg_key
            sent, frames = counters.bytes_sent, stats.frames
            bytes0, frames0 = self._leg_marks.get(key, (0, 0))
            marks[key] = (sent, frames)
            leg_rates[key] = (rate(8 * (sent - bytes0), seconds), rate(frames - frames0, seconds))
        self._leg_marks = marks  # legs that ended are forgotten
        return TrackSample(interval_ms=int(seconds * 1000), bitrate_bps=round(bitrate, 1), fps=round(best_fps, 2),
                           frames_total=best_frames, packet_loss=round(worst_loss, 4),
                           jitter_ms=round(worst_jitter, 2), layers=layers, legs=leg_rates)


class _CommonTelemetry(TypedDict):
    """The fields a track's sample and each of its legs' samples share."""

    project: str
    room: str
    room_sid: str
    track_sid: str
    kind: TrackKind
    interval_ms: int


def track_telemetry(track: PublishedTrack, now: float) -> tuple[TrackTelemetry, list[SubscriptionTelemetry]]:
    """One sample of a published track and of each of its subscriber legs."""
    from .remote import RemoteTrack  # (remote imports track, which imports this module)

    publisher = track.publisher
    if isinstance(track, RemoteTrack):  # received from another node through the relay
        project, room, room_sid = track.project, track.room_name, ""
    else:
        spec = track.publisher.spec
        project, room, room_sid = spec.project, spec.room.name, spec.room.sid
    subs = track.subscriptions()
    streams = track.layer_streams()
    sample = track.analytics.snapshot(now, track.bytes_in, streams, track.active_layers(now),
                                      [(sub, sub.stats) for sub in subs])
    kind = track.analytics.kind
    common: _CommonTelemetry = {"project": project, "room": room, "room_sid": room_sid, "track_sid": track.sid,
              "kind": kind, "interval_ms": sample.interval_ms}
    dynacast = track.dynacast.max_layer if track.dynacast is not None else None
    head = TrackTelemetry(
        **common, participant_sid=publisher.sid, identity=publisher.identity, mime_type=track.info.mime_type,
        bytes_total=track.bytes_in, packets_total=track.packets_in, frames_total=sample.frames_total,
        bitrate_bps=sample.bitrate_bps, fps=sample.fps, packet_loss=sample.packet_loss, jitter_ms=sample.jitter_ms,
        plis_total=track.plis_sent, layers=sample.layers if track.rids else [], dynacast_max_layer=dynacast,
        subscribers=len(subs))
    legs: list[SubscriptionTelemetry] = []
    for sub in subs:
        stats = sub.stats
        bitrate, fps = sample.legs.get(sub.leg_key, (0.0, 0.0))
        down = sub.down
        legs.append(SubscriptionTelemetry(
            **common, publisher_sid=publisher.sid, participant_sid=sub.session.sid, identity=sub.session.identity,
            bytes_total=sub.bytes_sent, packets_total=sub.packets_sent, frames_total=stats.frames,
            bitrate_bps=round(bitrate, 1), fps=round(fps, 2), packet_loss=round(stats.loss, 4),
            jitter_ms=round(stats.jitter_ms, 2), rtt_ms=round(stats.rtt_ms, 1), remb_bps=stats.remb_bps,
            nacks_total=stats.nacks, plis_total=stats.plis, firs_total=stats.firs, layer=sub.forwarding_layer,
            target_layer=down.target_layer if down is not None else -1, requested_layer=sub.requested_layer,
            bandwidth_cap=sub.bwe.cap, paused=sub.paused, switches=stats.take_switches()))
    return head, legs
