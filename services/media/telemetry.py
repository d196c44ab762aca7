"""Track analytics as telemetry events: one sample of a track and of each subscriber leg."""

from __future__ import annotations

from typing import TypedDict

from shared.events import SubscriptionTelemetry, TrackKind, TrackTelemetry

from .track import PublishedTrack


class _Common(TypedDict):
    project: str
    room: str
    room_sid: str
    track_sid: str
    kind: TrackKind
    interval_ms: int


def track_telemetry(track: PublishedTrack, now: float) -> tuple[TrackTelemetry, list[SubscriptionTelemetry]]:
    """One sample of a published track and of each of its subscriber legs."""
    publisher = track.publisher
    project, room, room_sid = track.project, track.room_name, track.room_sid
    subs = track.subscriptions()
    streams = track.layer_streams()
    sample = track.analytics.snapshot(now, track.bytes_in, streams, track.active_layers(now),
                                      [(sub, sub.stats) for sub in subs])
    kind = track.analytics.kind
    common = _Common(project=project, room=room, room_sid=room_sid, track_sid=track.sid, kind=kind,
                     interval_ms=sample.interval_ms)
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
