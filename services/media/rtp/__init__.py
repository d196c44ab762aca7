"""Pure RTP/RTCP forwarding core of the media service (no I/O, no asyncio, no aiortc).

Modules, one concept each:

* :mod:`.header` — RTP header / RFC 8285 extension access on raw bytes, RTP/RTCP demux;
* :mod:`.extensions` — audio level, RID, MID values; per-subscriber extension rewriting;
* :mod:`.codecs` — keyframe detection (VP8, H.264, audio), VP8 picture-id munging;
* :mod:`.packet_cache` — ring of recent packets per stream for NACK answers;
* :mod:`.rtcp` — RTCP parse/build (SR, RR, PLI, FIR, REMB, NACK);
* :mod:`.forwarder` — per-subscriber rewrite state (:class:`DownTrack`);
* :mod:`.selector` — simulcast layer choice from requested dimensions.
"""
