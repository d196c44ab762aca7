"""A track published on this node and its fan-out to local subscribers.

The receive callback (`on_rtp`) is the hot path: one parse into a reusable `SourcePacket`, a
cache put for NACKs, then per subscriber one `DownTrack.write_into` the shared SRTP scratch
buffer and a synchronous `send_scratch` (protect in place, sendto). No await, no per-copy
allocation, no lookup outside this object.
"""

from __future__ import annotations

import logging
import time

from livekit.protocol import models

from shared.events import LayerSwitchReason, TrackKind, TrackWire

from .analytics import LegStats, TrackAnalytics
from .bwe import BandwidthEstimator, rtt_from_report
from .dynacast import NO_LAYER, Dynacast, quality_update
from .ports import Publisher, PublisherFeedback, Subscriber
from .receive_stats import ReceiveStats
from .relay_link import TrackExports
from .rtp import rtcp
from .rtp.codecs import Codec, codec_from_mime
from .rtp.extensions import URI_AUDIO_LEVEL, ExtensionRewriter, read_audio_level
from .rtp.forwarder import DownTrack, SourcePacket
from .rtp.packet_cache import PacketCache
from .rtp.selector import RID_TO_LAYER, LayerInfo, layer_for_quality, select_layer
from .webrtc.peer import OutgoingTrack
from .webrtc.sdp import MediaSection
from .webrtc.srtp import SCRATCH

log = logging.getLogger(__name__)

PLI_INTERVAL = 0.3  # seconds between keyframe requests per layer
LAYER_IDLE = 1.0  # a simulcast layer with no packet for this long counts as stopped
# Upper bound we tell publishers (REMB) for one video track. Libwebrtc adopts a REMB at once in
# its first seconds, which is what lets a camera reach its top simulcast layer without TWCC.
MAX_VIDEO_BITRATE = 3_000_000
SERVER_SSRC = 1  # sender SSRC we put in RTCP feedback towards publishers


def wire_from_media(media: MediaSection) -> TrackWire:
    primary = media.media_codecs[0] if media.media_codecs else None
    return TrackWire(
        kind=media.kind, mime_type=media.mime_type,
        clock_rate=primary.clock_rate if primary else (48000 if media.kind == "audio" else 90000),
        payload_types=sorted(c.payload_type for c in media.media_codecs),
        rtx_payload_types=sorted(set(media.rtx_payload_types.values())),
        extensions={uri: ext_id for ext_id, uri in media.extmaps.items()},
        rids=media.send_rids if media.is_simulcast_send else [])


class Subscription:
    """One subscriber's leg of a published track."""

    __slots__ = ("bwe", "down", "outgoing", "paused", "requested_layer", "session", "stats")

    def __init__(self, session: Subscriber, outgoing: OutgoingTrack, top_layer: int = 2) -> None:
        self.session = session
        self.outgoing = outgoing
        self.down: DownTrack | None = None
        self.requested_layer = top_layer
        self.paused = False
        self.bwe = BandwidthEstimator(top_layer=top_layer)
        self.stats = LegStats()

    # what analytics reads (analytics.LegCounters)
    @property
    def leg_key(self) -> str:
        return self.session.sid

    @property
    def bytes_sent(self) -> int:
        return self.down.payload_bytes_sent if self.down is not None else 0

    @property
    def packets_sent(self) -> int:
        return self.down.packets_sent if self.down is not None else 0

    @property
    def forwarding_layer(self) -> int:
        down = self.down
        return down.current_layer if down is not None and not down.paused and down.started else -1


class PublishedTrack:
    def __init__(self, publisher: Publisher, info: models.TrackInfo, cid: str, wire: TrackWire, *,
                 feedback: PublisherFeedback | None = None, project: str = "", room_name: str = "",
                 room_sid: str = "") -> None:
        self.publisher = publisher
        self.feedback = feedback  # None for a track received from another node: its node talks to the publisher
        self.project = project
        self.room_name = room_name
        self.room_sid = room_sid
        self.info = info
        self.sid = info.sid
        self.cid = cid
        self.mid = info.mid
        self.wire = wire
        self.kind = wire.kind
        self.codec = codec_from_mime(wire.mime_type) if wire.mime_type else Codec.OPUS
        self.clock_rate = wire.clock_rate
        self.payload_types = set(wire.payload_types)
        self.rtx_payload_types = set(wire.rtx_payload_types)
        self.extension_ids = dict(wire.extensions)
        self.rids = list(wire.rids)
        self.layers = sorted({RID_TO_LAYER.get(rid, 2) for rid in self.rids}) or [0]
        self.top_layer = self.layers[-1]
        self._layer_info = [LayerInfo(RID_TO_LAYER.get(layer.rid, layer.quality), layer.width, layer.height)
                            for layer in info.layers] if self.rids else []
        self._source = SourcePacket(self.codec)
        self._caches: dict[int, PacketCache] = {}
        self._layer_ssrc: dict[int, int] = {}
        self._last_pli: dict[int, float] = {}
        self._stats: dict[int, ReceiveStats] = {}
        self._layer_seen = [0.0, 0.0, 0.0]
        self._audio_level_id = self.extension_ids.get(URI_AUDIO_LEVEL, 0) if self.kind == "audio" else 0
        self.audio_level = 0.0  # smoothed, 0..1
        self._subs: dict[str, Subscription] = {}
        self._rewriters: dict[tuple[tuple[tuple[str, int], ...], str | None], ExtensionRewriter] = {}
        self._active: tuple[Subscription, ...] = ()  # snapshot iterated by the hot path
        self.packets_in = 0
        self.bytes_in = 0
        self.dropped_in = 0
        self.plis_sent = 0
        self.analytics = TrackAnalytics(TrackKind.AUDIO if self.kind == "audio" else TrackKind.VIDEO, self.clock_rate)
        # Dynacast talks to the publisher's own client; another node runs it for its own tracks.
        self.dynacast = Dynacast(self.layers) if self.kind == "video" and len(self.layers) > 1 and \
            feedback is not None else None
        self.exports: TrackExports | None = None  # relay destinations, set while other nodes subscribe
        self.closed = False

    # ---- receive hot path -----------------------------------------------------------------
    def on_rtp(self, rid: str, packet: bytes) -> None:
        pt = packet[1] & 0x7F
        if pt in self.rtx_payload_types:
            self.dropped_in += 1  # retransmissions from the publisher are not unwrapped yet
            return
        layer = RID_TO_LAYER.get(rid, 2) if rid else self.top_layer
        source = self._source
        try:
            source.load(packet, layer)
        except ValueError:
            self.dropped_in += 1
            return
        self.packets_in += 1
        self.bytes_in += len(packet)
        ssrc = source.ssrc
        cache = self._caches.get(ssrc)
        if cache is None:
            cache = self._caches[ssrc] = PacketCache()
            self._layer_ssrc[layer] = ssrc
            self._stats[ssrc] = ReceiveStats(ssrc, self.clock_rate, source.sequence)
        cache.put(source.sequence, packet)
        self._stats[ssrc].update(source.sequence, source.timestamp, source.arrival)
        self._layer_seen[layer] = source.arrival
        if self.exports is not None and self.exports.targets:
            self.exports.send_rtp(rid, packet)
        if self._audio_level_id:
            raw = read_audio_level(packet, source, self._audio_level_id)
            if raw >= 0:
                # RFC 6464: 0 dBov loudest .. 127 silent; smoothed so one loud packet is no speaker.
                self.audio_level = 0.9 * self.audio_level + 0.1 * (1.0 - (raw & 0x7F) / 127.0)
        want_keyframe = False
        scratch = SCRATCH
        for sub in self._active:
            down = sub.down
            length = down.write_into(scratch, packet, source)  # type: ignore[union-attr]
            if length:
                sub.outgoing.send_scratch(length)
            elif down.needs_keyframe and layer == down.target_layer:  # type: ignore[union-attr]
                want_keyframe = True
        if want_keyframe:
            self.request_keyframe(layer)

    def request_keyframe(self, layer: int) -> None:
        now = time.monotonic()
        if now - self._last_pli.get(layer, 0.0) < PLI_INTERVAL:
            return
        ssrc = self._layer_ssrc.get(layer)
        if ssrc is None:
            return
        self._last_pli[layer] = now
        self.plis_sent += 1
        self.send_keyframe_request(layer, ssrc)

    @property
    def is_local(self) -> bool:
        """Published by a session of this node (not received through the relay)."""
        return self.publisher.is_local

    def send_keyframe_request(self, layer: int, ssrc: int) -> None:
        if self.feedback is not None:
            self.feedback.send_rtcp(rtcp.build_pli(SERVER_SSRC, ssrc))

    def tick(self, now: float) -> list[bytes]:
        """Periodic (not per packet): follow the layers the publisher really sends, and build the
        Receiver Report and REMB that go back to it."""
        if self.rids:
            active = self.active_layers(now)
            for sub in self._active:
                self._retarget(sub, LayerSwitchReason.PUBLISHER, active)
        if self.dynacast is not None:
            needed = [NO_LAYER if sub.paused else sub.requested_layer for sub in self._subs.values()]
            if self.exports is not None and self.exports.targets:
                needed.append(self.top_layer)  # other nodes' subscribers: their needs are not known here
            max_layer = self.dynacast.update(needed, now)
            if max_layer is not None and self.feedback is not None:
                log.info("track %s: dynacast keeps layers up to %d", self.sid, max_layer)
                self.feedback.send(quality_update(self.sid, self.info.mime_type, self.layers, max_layer))
        self.analytics.accumulate(now, self.layer_streams(),
                                  ((sub.stats, sub.forwarding_layer, sub.bytes_sent) for sub in self._active))
        out: list[bytes] = []
        if self._stats:
            out.append(rtcp.build_rr(SERVER_SSRC, [stats.report_block() for stats in self._stats.values()]))
            if self.kind == "video":
                out.append(rtcp.build_remb(SERVER_SSRC, MAX_VIDEO_BITRATE, list(self._stats)))
        return out

    def on_publisher_rtcp(self, packet: rtcp.RtcpPacket) -> None:
        if isinstance(packet, rtcp.SenderReport):
            if self.exports is not None and self.exports.targets:
                self.exports.send_sender_report(packet)
            stats = self._stats.get(packet.ssrc)
            if stats is not None:
                stats.sender_report(packet.ntp)
            for sub in self._active:
                values = sub.down.translate_sender_report(packet.ssrc, packet.ntp, packet.rtp_timestamp)  # type: ignore[union-attr]
                if values is not None:
                    sub.outgoing.sync_sender_report(*values)

    def active_layers(self, now: float) -> list[int]:
        """Simulcast layers with packets within LAYER_IDLE (all layers of a non-simulcast track)."""
        if not self.rids:
            return list(self.layers)
        return [layer for layer in self.layers if now - self._layer_seen[layer] < LAYER_IDLE]

    def layer_streams(self) -> dict[int, ReceiveStats]:
        return {layer: self._stats[ssrc] for layer, ssrc in self._layer_ssrc.items() if ssrc in self._stats}

    def subscriptions(self) -> list[Subscription]:
        return list(self._subs.values())

    def loss(self) -> float:
        """Upstream loss since the previous call, worst stream of the track."""
        return max((stats.loss_since_last_call() for stats in self._stats.values()), default=0.0)

    def counters(self) -> dict[str, int]:
        downs = [sub.down for sub in self._subs.values() if sub.down is not None]
        return {
            "packets_in_total": self.packets_in, "bytes_in_total": self.bytes_in,
            "packets_forwarded_total": sum(d.packets_sent for d in downs),
            "bytes_forwarded_total": sum(sub.outgoing.bytes_sent for sub in self._subs.values()),
            "packets_dropped_total": self.dropped_in + sum(d.packets_dropped for d in downs),
        }

    def sent_to(self, session: Subscriber) -> tuple[int, int] | None:
        """(SRTP bytes, packets) sent to that subscriber so far, if it subscribes."""
        sub = self._subs.get(session.sid)
        if sub is None:
            return None
        return sub.outgoing.bytes_sent, sub.outgoing.packets_sent

    def owns_ssrc(self, ssrc: int) -> bool:
        return ssrc in self._caches

    # ---- subscribers ----------------------------------------------------------------------
    def subscribers(self) -> list[Subscriber]:
        return [sub.session for sub in self._subs.values()]

    def add_subscriber(self, session: Subscriber) -> None:
        if session.sid in self._subs or self.closed:
            return
        codec_name = "opus" if self.kind == "audio" else self.codec.name
        outgoing = session.subscriber.add_outgoing(
            self.kind, self.sid, f"{self.publisher.sid}|{self.sid}", codecs=[codec_name], rtx=False)
        sub = Subscription(session, outgoing, self.top_layer)
        outgoing.on_rtcp = lambda data, sub=sub: self._on_subscriber_rtcp(sub, data)
        self._subs[session.sid] = sub

    def subscriber_ready(self, session: Subscriber) -> None:
        """The subscriber answered an offer carrying our m-line: start forwarding to it."""
        sub = self._subs.get(session.sid)
        if sub is None or sub.down is not None:
            return
        if not sub.outgoing.negotiated:
            log.debug("track %s: subscriber %s answered without this track's m-line yet", self.sid, session.sid)
            return
        out = sub.outgoing
        pt = out.payload_type
        if pt is None:
            log.warning("track %s: subscriber %s negotiated no codec", self.sid, session.sid)
            return
        rewriter = self._rewriter(out.extension_ids, out.mid)
        sub.down = DownTrack(out.ssrc, self.codec, self.clock_rate, dict.fromkeys(self.payload_types, pt),
                             rewriter, target_layer=self._effective_layer(sub))
        sub.down.paused = sub.paused
        self._refresh()
        self.request_keyframe(sub.down.target_layer)

    def _rewriter(self, subscriber_ids: dict[str, int], mid: str | None) -> ExtensionRewriter:
        """Subscribers with the same extension ids and MID share one rewriter, which then
        translates each packet's extension block once for all of them."""
        key = (tuple(sorted(subscriber_ids.items())), mid)
        rewriter = self._rewriters.get(key)
        if rewriter is None:
            rewriter = self._rewriters[key] = ExtensionRewriter(self.extension_ids, subscriber_ids, mid)
        return rewriter

    def remove_subscriber(self, session: Subscriber) -> None:
        sub = self._subs.pop(session.sid, None)
        if sub is None:
            return
        self._refresh()
        if not session.closed:
            session.spawn(session.subscriber.remove_outgoing(sub.outgoing), "remove-outgoing")

    def update_settings(self, session: Subscriber, disabled: bool, width: int, height: int, quality: int) -> None:
        sub = self._subs.get(session.sid)
        if sub is None:
            return
        if width or height:
            sub.requested_layer = select_layer(self._layer_info, width, height) if self._layer_info else self.top_layer
        elif not disabled:  # no size: the (deprecated) quality decides, LOW being 0 (as LiveKit reads it)
            sub.requested_layer = layer_for_quality(quality, self.layers)
        sub.paused = disabled
        if sub.down is not None:
            sub.down.paused = disabled
            self._retarget(sub, LayerSwitchReason.REQUESTED)
            if not disabled:
                self.request_keyframe(sub.down.target_layer)

    def _effective_layer(self, sub: Subscription, active: list[int] | None = None) -> int:
        """The best layer not above what the subscriber asked for, among those arriving (a
        publisher short of bandwidth stops its top layers; a subscriber must not starve)."""
        layers = active if active else self.layers
        wanted = min(sub.requested_layer, self.top_layer, sub.bwe.cap)
        return max((layer for layer in layers if layer <= wanted), default=min(layers))

    def _retarget(self, sub: Subscription, reason: LayerSwitchReason, active: list[int] | None = None) -> None:
        down = sub.down
        if down is None:
            return
        target = self._effective_layer(sub, active if active is not None else self.active_layers(time.monotonic()))
        if down.target_layer == target:
            return
        sub.stats.switched(down.target_layer, target, reason)
        if reason is LayerSwitchReason.CONGESTION and 0 <= target < down.current_layer:
            # Congested: the old layer stops now rather than at the new layer's keyframe, or
            # that keyframe queues (and is lost) behind the very packets that overload the link.
            down.paused = True
            down.target_layer = target
            down.paused = sub.paused
            self.request_keyframe(target)
        else:
            down.target_layer = target

    def _refresh(self) -> None:
        self._active = tuple(sub for sub in self._subs.values() if sub.down is not None)

    def _on_subscriber_rtcp(self, sub: Subscription, data: bytes) -> None:
        down = sub.down
        if down is None:
            return
        try:
            packets = rtcp.parse_compound(data)
        except ValueError:
            return
        for packet in packets:
            if isinstance(packet, rtcp.Pli | rtcp.Fir):
                if isinstance(packet, rtcp.Pli):
                    sub.stats.plis += 1
                else:
                    sub.stats.firs += 1
                self.request_keyframe(down.target_layer)
            elif isinstance(packet, rtcp.ReceiverReport | rtcp.SenderReport | rtcp.Remb):
                self._on_subscriber_feedback(sub, packet)
            elif isinstance(packet, rtcp.Nack):
                sub.stats.nacks += len(packet.seqs)
                if self.rids:
                    before = sub.bwe.cap
                    self._apply_cap(sub, before, sub.bwe.on_nacks(packet.seqs, down.last_sequence,
                                                                   time.monotonic()))
                for out_seq in packet.seqs:
                    target = down.translate_nack(out_seq)
                    if target is not None and target.ssrc != down.source_ssrc:
                        continue  # a layer we switched away from: its keyframe is coming, resends only add load
                    cache = self._caches.get(target.ssrc) if target else None
                    cached = cache.get(target.sequence) if cache and target else None
                    resent = down.rewrite_retransmission(cached, out_seq) if cached else None
                    if resent is not None:
                        sub.outgoing.send_rtp(resent)

    def _on_subscriber_feedback(self, sub: Subscription,
                                packet: rtcp.ReceiverReport | rtcp.SenderReport | rtcp.Remb) -> None:
        """Receiver reports and REMB from a subscriber: its stats, and its bandwidth cap."""
        now = time.monotonic()
        before = sub.bwe.cap
        if isinstance(packet, rtcp.Remb):
            sub.stats.remb_bps = packet.bitrate
            cap = sub.bwe.on_remb(packet.bitrate, sub.stats.sending_bps, now)
        else:
            block = next((b for b in packet.reports if b.ssrc == sub.outgoing.ssrc), None)
            if block is None:
                return
            rtt = rtt_from_report(rtcp.ntp_middle(rtcp.ntp_from_seconds(time.time())), block.lsr, block.dlsr)
            sub.stats.on_report(block, self.clock_rate, rtt)
            cap = sub.bwe.on_report(block.fraction_lost / 256.0, rtt, now, block.highest_seq & 0xFFFF) \
                if self.rids else None
        if self.rids:
            self._apply_cap(sub, before, cap)

    def _apply_cap(self, sub: Subscription, before: int, cap: int | None) -> None:
        if cap is not None:
            log.info("track %s -> %s: bandwidth cap %d -> %d (loss %.2f, rtt %.0f ms, remb %d)", self.sid,
                     sub.session.identity, before, cap, sub.bwe.loss, sub.bwe.rtt_ms, sub.bwe.remb_bps)
            if cap < before and sub.down is not None:
                sub.bwe.stepped_down(sub.down.last_sequence, time.monotonic())
            self._retarget(sub, LayerSwitchReason.CONGESTION if cap < before else LayerSwitchReason.RECOVERED)

    def close(self) -> None:
        self.closed = True
        self._active = ()
        self._subs.clear()
        self._caches.clear()
