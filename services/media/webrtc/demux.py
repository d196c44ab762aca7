"""Which m-line and simulcast layer a publisher's RTP packet belongs to, from its SSRC."""

from __future__ import annotations

from .sdp import MID_URI, REPAIRED_RID_URI, RID_URI, MediaSection

__all__ = ["Demux", "header_extensions"]


class Demux:
    """SSRC -> (mid, rid) for a publisher connection.

    Signalled SSRCs (``a=ssrc``, FID groups) are known from the offer; rid-simulcast SSRCs are
    learned from the first packet carrying the MID and RID / repaired-RID header extensions
    (libwebrtc stops sending them after a while, so the mapping is cached per SSRC). A packet
    that cannot be mapped yet falls back to its payload type if exactly one m-line uses it."""

    def __init__(self) -> None:
        self.routes: dict[int, tuple[str, str]] = {}
        self._ext_ids: dict[int, str] = {}  # extmap id -> "mid" | "rid" | "rrid"
        self._pt_mid: dict[int, str] = {}
        self._mids: set[str] = set()

    def configure(self, media: list[MediaSection]) -> None:
        names = {MID_URI: "mid", RID_URI: "rid", REPAIRED_RID_URI: "rrid"}
        sending = [m for m in media if m.sends and m.mid is not None]
        self._mids = {m.mid for m in sending if m.mid is not None}
        self._ext_ids = {ext_id: names[uri] for m in sending for ext_id, uri in m.extmaps.items() if uri in names}
        pt_owners: dict[int, set[str]] = {}
        for m in sending:
            for pt in m.codecs:
                pt_owners.setdefault(pt, set()).add(m.mid or "")
        self._pt_mid = {pt: next(iter(mids)) for pt, mids in pt_owners.items() if len(mids) == 1}
        # forget SSRCs of m-lines that stopped sending, then add the signalled ones
        self.routes = {ssrc: route for ssrc, route in self.routes.items() if route[0] in self._mids}
        for m in sending:
            for ssrc in m.ssrcs:
                self.routes[ssrc] = (m.mid or "", "")

    def learn(self, packet: bytes) -> tuple[str, str]:
        values = header_extensions(packet, self._ext_ids)
        mid = values.get("mid", "")
        rid = values.get("rid") or values.get("rrid") or ""
        ssrc = int.from_bytes(packet[8:12], "big")
        if mid in self._mids:
            route = (mid, rid)
            self.routes[ssrc] = route
            return route
        return (self._pt_mid.get(packet[1] & 0x7F, ""), rid)


def header_extensions(packet: bytes, wanted: dict[int, str]) -> dict[str, str]:
    """Values of the wanted header-extension ids (RFC 8285 one- and two-byte forms) as text."""
    out: dict[str, str] = {}
    if not wanted or not packet[0] & 0x10:
        return out
    offset = 12 + 4 * (packet[0] & 0x0F)
    if len(packet) < offset + 4:
        return out
    profile = (packet[offset] << 8) | packet[offset + 1]
    end = offset + 4 + 4 * ((packet[offset + 2] << 8) | packet[offset + 3])
    if end > len(packet):
        return out
    i = offset + 4
    if profile == 0xBEDE:
        while i < end:
            head = packet[i]
            if head == 0:
                i += 1
                continue
            ext_id, length = head >> 4, (head & 0x0F) + 1
            if ext_id == 15:
                break
            if ext_id in wanted:
                out[wanted[ext_id]] = packet[i + 1 : i + 1 + length].decode("ascii", "replace")
            i += 1 + length
    elif profile >> 4 == 0x100:
        while i + 1 < end:
            ext_id = packet[i]
            if ext_id == 0:
                i += 1
                continue
            length = packet[i + 1]
            if ext_id in wanted:
                out[wanted[ext_id]] = packet[i + 2 : i + 2 + length].decode("ascii", "replace")
            i += 2 + length
    return out

