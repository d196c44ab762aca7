"""Per-subscriber RTP rewrite state: the SFU's forwarding inner loop.

One :class:`SourcePacket` is filled per received packet (header, layer, keyframe flag, VP8
descriptor) and then handed to every subscriber's :class:`DownTrack`, whose
:meth:`DownTrack.rewrite` returns the bytes to protect and send, or None.

Continuity model
----------------
A DownTrack forwards one *source stream* (one publisher SSRC, i.e. one simulcast layer) at a
time. Each time it starts forwarding a source (first start, layer switch, publisher restart
with a new SSRC, resume after pause) it opens an *epoch* with fixed offsets::

    out_seq = (src_seq + seq_offset) mod 2^16
    out_ts  = (src_ts  + ts_offset)  mod 2^32
    out_picture_id / out_tl0picidx likewise (VP8)

chosen so that the epoch's first packet gets ``last out seq + 1`` and
``last out ts + (wall-clock gap x clock rate)``. Offsets never change inside an epoch, so
reordered and retransmitted source packets map to the right output numbers, and a subscriber's
NACK maps back through the (small) ring of recent epochs to ``(source ssrc, source seq)``.
Video epochs only open on a keyframe of the target layer; until then everything else of that
layer is dropped and :attr:`DownTrack.needs_keyframe` asks the caller for a PLI upstream.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from .codecs import Codec, Vp8Descriptor, apply_vp8_offsets, h264_is_keyframe
from .extensions import ExtensionRewriter
from .header import FIXED_HEADER, RtpHeader
from .rtcp import build_sr

__all__ = ["DownTrack", "NackTarget", "SourcePacket"]

_pack_header = FIXED_HEADER.pack_into
_monotonic = time.monotonic
_MAX_GROWTH = 1024  # an extension-block rebuild adds at most this (a MID, ids moved to the two-byte form)


class SourcePacket(RtpHeader):
    """A received packet of a published track, parsed once and shared by all DownTracks.

    Reusable: the receive path keeps one per published track and calls :meth:`load` for each
    packet; DownTracks must not keep references to it.
    """

    __slots__ = ("arrival", "codec", "data", "keyframe", "layer", "vp8")

    def __init__(self, codec: Codec) -> None:
        super().__init__()
        self.codec = codec
        self.data: bytes = b""
        self.layer = 0
        self.keyframe = False
        self.arrival = 0.0
        self.vp8 = Vp8Descriptor()

    def load(self, data: bytes, layer: int = 0, arrival: float | None = None) -> SourcePacket:
        """Parse ``data`` (plaintext RTP); raises ``ValueError`` if malformed.

        ``layer`` is the simulcast layer the caller resolved from RID/SSRC (0 without
        simulcast); ``arrival`` a monotonic time in seconds (default: now).
        """
        self.parse(data)
        self.data = data
        self.layer = layer
        self.arrival = _monotonic() if arrival is None else arrival
        codec = self.codec
        start = self.payload_start
        end = self.payload_end
        if codec == Codec.VP8:
            if start < end:
                self.keyframe = self.vp8.parse(data, start, end).keyframe
            else:
                self.vp8.clear()
                self.keyframe = False
        elif codec == Codec.H264:
            self.keyframe = h264_is_keyframe(data, start, end)
        else:
            self.keyframe = True
        return self


class NackTarget(NamedTuple):
    layer: int
    ssrc: int
    sequence: int


class _Epoch:
    __slots__ = ("layer", "out_start", "pid_offset", "seq_offset", "ssrc", "tl0_offset", "ts_offset")

    def __init__(
        self,
        layer: int,
        ssrc: int,
        out_start: int,
        seq_offset: int,
        ts_offset: int,
        pid_offset: int,
        tl0_offset: int,
    ) -> None:
        self.layer = layer
        self.ssrc = ssrc
        self.out_start = out_start
        self.seq_offset = seq_offset
        self.ts_offset = ts_offset
        self.pid_offset = pid_offset
        self.tl0_offset = tl0_offset


class DownTrack:
    """One subscriber's copy of one published track.

    ``payload_types`` maps publisher PT → subscriber PT (packets with other PTs are dropped).
    ``extensions`` translates header extensions (None: forward the block untouched).
    """

    __slots__ = (
        "_epochs",
        "_ext",
        "_keyframe_wanted",
        "_last_arrival",
        "_last_in_pid",
        "_last_in_tl0",
        "_last_seq",
        "_last_ts",
        "_max_epochs",
        "_paused",
        "_pid_offset",
        "_pt_map",
        "_rtx_scratch",
        "_scratch",
        "_seq_offset",
        "_src_high",
        "_src_ssrc",
        "_src_start",
        "_target",
        "_tl0_offset",
        "_ts_offset",
        "_vp8",
        "bytes_sent",
        "clock_rate",
        "codec",
        "current_layer",
        "layer_switches",
        "packets_dropped",
        "packets_sent",
        "payload_bytes_sent",
        "retransmissions",
        "ssrc",
    )

    def __init__(
        self,
        ssrc: int,
        codec: Codec,
        clock_rate: int,
        payload_types: Mapping[int, int],
        extensions: ExtensionRewriter | None = None,
        *,
        target_layer: int = 0,
        max_epochs: int = 32,  # layer switches and padding skips whose packets NACKs can still reach
    ) -> None:
        if not 0 <= ssrc <= 0xFFFFFFFF:
            raise ValueError("ssrc out of range")
        self.ssrc = ssrc
        self.codec = codec
        self.clock_rate = clock_rate
        pt_map = [-1] * 128
        for src_pt, dst_pt in payload_types.items():
            if not (0 <= src_pt < 128 and 0 <= dst_pt < 128):
                raise ValueError(f"invalid payload type mapping {src_pt}->{dst_pt}")
            pt_map[src_pt] = dst_pt
        self._pt_map = pt_map
        self._ext = None if extensions is None or extensions.passthrough else extensions
        self._vp8 = codec == Codec.VP8
        self._target = target_layer if codec.is_video else 0
        self._paused = False
        self._keyframe_wanted = codec.is_video
        self._max_epochs = max_epochs
        self._epochs: list[_Epoch] = []
        self.current_layer = -1
        # Current epoch
        self._src_ssrc = -1
        self._src_start = 0
        self._src_high = 0
        self._seq_offset = 0
        self._ts_offset = 0
        self._pid_offset = 0
        self._tl0_offset = 0
        # Newest packet sent (output numbering) and source VP8 indices of it.
        self._last_seq = -1
        self._last_ts = 0
        self._last_arrival = 0.0
        self._last_in_pid = -1
        self._last_in_tl0 = -1
        self._scratch = SourcePacket(codec)
        self._rtx_scratch = SourcePacket(codec)
        self.packets_sent = 0
        self.bytes_sent = 0
        self.payload_bytes_sent = 0
        self.packets_dropped = 0
        self.layer_switches = 0
        self.retransmissions = 0

    # ------------------------------------------------------------------ control

    @property
    def target_layer(self) -> int:
        return self._target

    @target_layer.setter
    def target_layer(self, layer: int) -> None:
        if not self.codec.is_video:
            return
        self._target = layer
        if not self._paused:
            # A switch (or the first start) waits for a keyframe of the new target layer.
            self._keyframe_wanted = layer != self.current_layer

    @property
    def started(self) -> bool:
        """True once forwarding has begun (for video: a keyframe has been sent)."""
        return self._last_seq >= 0

    @property
    def paused(self) -> bool:
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        """Pausing drops everything; resuming reopens an epoch (on a keyframe for video)."""
        if value == self._paused:
            return
        self._paused = value
        if value:
            self._src_ssrc = -1
            self.current_layer = -1
            self._keyframe_wanted = False
        else:
            self._keyframe_wanted = self.codec.is_video

    @property
    def needs_keyframe(self) -> bool:
        """True while waiting for a keyframe of :attr:`target_layer`: send a PLI upstream."""
        return self._keyframe_wanted

    @property
    def last_sequence(self) -> int:
        """Output sequence number of the newest packet sent (-1 before the first)."""
        return self._last_seq

    @property
    def last_timestamp(self) -> int:
        return self._last_ts

    @property
    def source_ssrc(self) -> int:
        """Publisher SSRC currently forwarded (-1 if none)."""
        return self._src_ssrc

    # ------------------------------------------------------------------ hot path

    def rewrite(self, packet: bytes, src: SourcePacket | None = None) -> bytes | None:
        """Packet to send to this subscriber, or None when dropped.

        ``src`` is the shared parse of ``packet`` (see :class:`SourcePacket`); without it the
        packet is parsed here as layer 0 (convenient, slower). The fan-out uses
        :meth:`write_into` instead, which writes into a caller's buffer.
        """
        if src is None:
            src = self._scratch.load(packet)
        buf = bytearray(len(packet) + _MAX_GROWTH)
        length = self.write_into(memoryview(buf), packet, src)
        return bytes(buf[:length]) if length else None

    def write_into(self, buf: memoryview, packet: bytes, src: SourcePacket) -> int:
        """Write the packet for this subscriber into ``buf`` (from offset 0); its length, or 0
        when dropped (or when it does not fit ``buf``). The per-copy hot path."""
        seq = src.sequence
        if src.ssrc != self._src_ssrc:
            if src.layer != self._target or self._paused:
                self.packets_dropped += 1
                return 0
            if not src.keyframe:
                self.packets_dropped += 1
                if self.codec.is_video:
                    self._keyframe_wanted = True
                return 0
            if src.layer == self.current_layer and self._replaced(src.ssrc):
                # Straggler from the stream a publisher restart replaced: never switch back.
                self.packets_dropped += 1
                return 0
            self._open_epoch(src)
            newest = True
        else:
            high = self._src_high
            if ((seq - high) & 0xFFFF) < 0x8000:
                newest = True
                if src.payload_start == src.payload_end and self.codec.is_video:
                    # Padding only (a publisher's bandwidth probe): not for subscribers, whose
                    # links it would fill. Later packets move up one, so they see no gap.
                    self._src_high = seq
                    self._skip_one()
                    self.packets_dropped += 1
                    return 0
            else:
                newest = False
                # Late packet: drop it if it predates this epoch's first packet.
                if ((high - seq) & 0xFFFF) > ((high - self._src_start) & 0xFFFF):
                    self.packets_dropped += 1
                    return 0
        pt = self._pt_map[src.payload_type]
        if pt < 0:
            self.packets_dropped += 1
            return 0
        ext = self._ext
        if ext is None:
            length = len(packet)
            if length > len(buf):
                self.packets_dropped += 1
                return 0
            buf[:length] = packet
            shift = 0
        else:
            length = ext.write_into(buf, packet, src)
            if not length:
                self.packets_dropped += 1
                return 0
            shift = length - len(packet)
        out_seq = (seq + self._seq_offset) & 0xFFFF
        out_ts = (src.timestamp + self._ts_offset) & 0xFFFFFFFF
        _pack_header(buf, 0, buf[0], (buf[1] & 0x80) | pt, out_seq, out_ts, self.ssrc)
        if self._vp8:
            desc = src.vp8
            if self._pid_offset or self._tl0_offset:
                apply_vp8_offsets(buf, src.payload_start + shift, desc, self._pid_offset, self._tl0_offset)
            if newest:
                if desc.picture_id >= 0:
                    self._last_in_pid = desc.picture_id
                if desc.tl0picidx >= 0:
                    self._last_in_tl0 = desc.tl0picidx
        if newest:
            self._src_high = seq
            self._last_seq = out_seq
            self._last_ts = out_ts
            self._last_arrival = src.arrival
        self.packets_sent += 1
        self.bytes_sent += length
        self.payload_bytes_sent += src.payload_end - src.payload_start
        return length

    def _skip_one(self) -> None:
        """The current stream loses one sequence number from here on: a new epoch entry (same
        stream, offset one less) keeps NACKs of earlier packets translating exactly."""
        self._seq_offset = (self._seq_offset - 1) & 0xFFFF
        next_out = (self._last_seq + 1) & 0xFFFF
        last = self._epochs[-1]
        if last.out_start == next_out and last.ssrc == self._src_ssrc:
            last.seq_offset = self._seq_offset  # nothing sent since the previous skip
            return
        self._epochs.append(_Epoch(last.layer, self._src_ssrc, next_out, self._seq_offset, self._ts_offset,
                                   self._pid_offset, self._tl0_offset))
        if len(self._epochs) > self._max_epochs:
            del self._epochs[0]

    def _replaced(self, ssrc: int) -> bool:
        layer = self.current_layer
        for ep in self._epochs:
            if ep.ssrc == ssrc and ep.layer == layer:
                return True
        return False

    def _open_epoch(self, src: SourcePacket) -> None:
        """Start forwarding ``src``'s stream; ``src`` becomes its first packet."""
        seq = src.sequence
        pid_offset = tl0_offset = 0
        if self._last_seq < 0:
            seq_offset = 0
            ts_offset = 0
        else:
            out_seq = (self._last_seq + 1) & 0xFFFF
            elapsed = src.arrival - self._last_arrival
            delta = int(elapsed * self.clock_rate + 0.5) if elapsed > 0 else 0
            out_ts = (self._last_ts + max(1, delta)) & 0xFFFFFFFF
            seq_offset = (out_seq - seq) & 0xFFFF
            ts_offset = (out_ts - src.timestamp) & 0xFFFFFFFF
            self.layer_switches += 1
            if self._vp8:
                desc = src.vp8
                if desc.picture_id >= 0 and self._last_in_pid >= 0:
                    last_out = (self._last_in_pid + self._pid_offset) & 0x7FFF
                    pid_offset = (last_out + 1 - desc.picture_id) & 0x7FFF
                if desc.tl0picidx >= 0 and self._last_in_tl0 >= 0:
                    last_out = (self._last_in_tl0 + self._tl0_offset) & 0xFF
                    tl0_offset = (last_out + 1 - desc.tl0picidx) & 0xFF
        self._src_ssrc = src.ssrc
        self.current_layer = src.layer
        self._src_start = seq
        self._src_high = seq
        self._seq_offset = seq_offset
        self._ts_offset = ts_offset
        self._pid_offset = pid_offset
        self._tl0_offset = tl0_offset
        self._keyframe_wanted = False
        epochs = self._epochs
        out_start = (seq + seq_offset) & 0xFFFF
        epochs.append(_Epoch(src.layer, src.ssrc, out_start, seq_offset, ts_offset, pid_offset, tl0_offset))
        if len(epochs) > self._max_epochs:
            del epochs[0]

    # ------------------------------------------------------------------ NACK / RTX

    def _find_epoch(self, out_seq: int) -> _Epoch | None:
        last = self._last_seq
        if last < 0:
            return None
        back = (last - out_seq) & 0xFFFF
        if back >= 0x8000:
            return None  # not sent yet
        upper = last
        for ep in reversed(self._epochs):
            span = (upper - ep.out_start) & 0xFFFF
            if ((out_seq - ep.out_start) & 0xFFFF) <= span:
                return ep
            upper = (ep.out_start - 1) & 0xFFFF
            if ((last - upper) & 0xFFFF) >= 0x8000:
                return None
        return None

    def translate_nack(self, out_seq: int) -> NackTarget | None:
        """Map a subscriber's NACKed sequence number back to the source packet."""
        ep = self._find_epoch(out_seq & 0xFFFF)
        if ep is None:
            return None
        return NackTarget(ep.layer, ep.ssrc, (out_seq - ep.seq_offset) & 0xFFFF)

    def translate_nacks(self, out_seqs: Iterable[int]) -> list[NackTarget]:
        out = []
        for s in out_seqs:
            t = self.translate_nack(s)
            if t is not None:
                out.append(t)
        return out

    def rewrite_retransmission(self, packet: bytes, out_seq: int) -> bytes | None:
        """Rewrite a cached source packet for resending as ``out_seq`` (from a NACK).

        Uses the offsets of the epoch that originally carried ``out_seq``; returns None when
        ``packet`` is not the source of ``out_seq`` or the epoch is no longer remembered.
        """
        out_seq &= 0xFFFF
        ep = self._find_epoch(out_seq)
        if ep is None:
            return None
        try:
            src = self._rtx_scratch.load(packet, ep.layer, 0.0)
        except ValueError:
            return None
        if src.ssrc != ep.ssrc or ((src.sequence + ep.seq_offset) & 0xFFFF) != out_seq:
            return None
        pt = self._pt_map[src.payload_type]
        if pt < 0:
            return None
        ext = self._ext
        if ext is None:
            buf = bytearray(packet)
            shift = 0
        else:
            buf = ext.rewrite(packet, src)
            shift = len(buf) - len(packet)
        out_ts = (src.timestamp + ep.ts_offset) & 0xFFFFFFFF
        _pack_header(buf, 0, buf[0], (buf[1] & 0x80) | pt, out_seq, out_ts, self.ssrc)
        if self._vp8 and (ep.pid_offset or ep.tl0_offset):
            apply_vp8_offsets(buf, src.payload_start + shift, src.vp8, ep.pid_offset, ep.tl0_offset)
        self.retransmissions += 1
        self.bytes_sent += len(buf)
        return bytes(buf)

    # ------------------------------------------------------------------ RTCP

    def translate_sender_report(self, ssrc: int, ntp: int, rtp_timestamp: int) -> tuple[int, int] | None:
        """``(ntp, rtp_ts)`` for this subscriber from the publisher SR of stream ``ssrc``.

        Only the SR of the source currently forwarded is usable (None otherwise). The NTP time
        is kept, the RTP time is shifted by the epoch's timestamp offset, so the NTP↔RTP
        mapping of the outgoing stream matches the one of the source (lip sync).
        """
        if ssrc != self._src_ssrc or self._src_ssrc < 0:
            return None
        return ntp, (rtp_timestamp + self._ts_offset) & 0xFFFFFFFF

    def build_sender_report(self, ssrc: int, ntp: int, rtp_timestamp: int) -> bytes | None:
        """A complete SR packet for the subscriber (see :meth:`translate_sender_report`)."""
        values = self.translate_sender_report(ssrc, ntp, rtp_timestamp)
        if values is None:
            return None
        return build_sr(self.ssrc, values[0], values[1], self.packets_sent, self.payload_bytes_sent)
