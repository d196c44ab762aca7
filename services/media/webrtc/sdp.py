"""SDP parsing and munging for LiveKit clients talking to aiortc.

aiortc 1.16's SDP layer ignores ``a=rid`` / ``a=simulcast`` and never negotiates the RID header
extensions, so a libwebrtc publisher that offers rid simulcast falls back to its lowest layer.
This module

* (with ``aiortc_compat.install()``, which registers the ``sdes:rtp-stream-id`` and
  ``sdes:repaired-rtp-stream-id`` URIs with aiortc so that it answers their extmaps)
* rewrites aiortc's answer text (aiortc never re-reads what it sends): ``a=rid:<x> recv`` and
  ``a=simulcast:recv <list>`` for every offered simulcast m-line, and ``inactive`` for the
  m-lines the client offered ``recvonly``/``inactive`` (pre-created receive transceivers);
* parses an SDP into :class:`MediaSection` records (mid, kind, direction, msid, rids, ssrcs and
  FID groups, extmaps, codecs) for the session layer.

The functions work on text and keep every line they do not touch, in order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "ABS_SEND_TIME_URI",
    "AUDIO_LEVEL_URI",
    "DIRECTIONS",
    "MID_URI",
    "REPAIRED_RID_URI",
    "RID_URI",
    "TRANSPORT_CC_URI",
    "CodecInfo",
    "MediaSection",
    "ParsedSdp",
    "RidInfo",
    "join_sections",
    "munge_publisher_answer",
    "parse_sdp",
    "remove_extmaps",
    "split_sections",
]

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
EOL = "\r\n"



# --------------------------------------------------------------------------- parsing


@dataclass
class CodecInfo:
    payload_type: int
    name: str  # as written in a=rtpmap, e.g. "VP8", "opus", "rtx"
    clock_rate: int
    channels: int | None = None
    fmtp: dict[str, str] = field(default_factory=dict)
    rtcp_fb: list[str] = field(default_factory=list)

    @property
    def is_rtx(self) -> bool:
        return self.name.lower() == "rtx"

    @property
    def apt(self) -> int | None:
        """For RTX: the payload type it repairs."""
        value = self.fmtp.get("apt")
        return int(value) if value is not None and value.isdigit() else None


@dataclass
class RidInfo:
    rid: str
    direction: str  # "send" | "recv"
    params: str = ""


@dataclass
class MediaSection:
    index: int
    kind: str  # audio | video | application
    port: int
    protocol: str
    formats: list[str]
    mid: str | None = None
    direction: str = "sendrecv"
    msid: tuple[str, str] | None = None  # (stream id, track id)
    rids: list[RidInfo] = field(default_factory=list)
    simulcast: dict[str, str] = field(default_factory=dict)  # "send"/"recv" -> "q;h;f"
    ssrcs: dict[int, dict[str, str]] = field(default_factory=dict)  # ssrc -> {cname, msid, ...}
    ssrc_groups: list[tuple[str, list[int]]] = field(default_factory=list)
    extmaps: dict[int, str] = field(default_factory=dict)  # id -> uri
    codecs: dict[int, CodecInfo] = field(default_factory=dict)  # payload type -> codec
    sctp_port: int | None = None
    max_message_size: int | None = None

    @property
    def stream_id(self) -> str:
        """msid stream id ("-" or "" when the client sent none)."""
        return self.msid[0] if self.msid else ""

    @property
    def track_id(self) -> str:
        """msid track id (LiveKit clients: the AddTrackRequest cid)."""
        return self.msid[1] if self.msid else ""

    @property
    def sends(self) -> bool:
        """The side that wrote this m-line sends media on it."""
        return self.kind in ("audio", "video") and self.direction in ("sendonly", "sendrecv")

    @property
    def mime_type(self) -> str:
        """``kind/name`` of the preferred codec, e.g. ``video/VP8``; "" if none."""
        codecs = self.media_codecs
        return f"{self.kind}/{codecs[0].name}" if codecs else ""

    @property
    def send_rids(self) -> list[str]:
        return [r.rid for r in self.rids if r.direction == "send"]

    @property
    def is_simulcast_send(self) -> bool:
        return bool(self.send_rids) and "send" in self.simulcast

    @property
    def rtx_ssrcs(self) -> dict[int, int]:
        """Primary SSRC -> RTX SSRC, from ``a=ssrc-group:FID``."""
        return {g[1][0]: g[1][1] for g in self.ssrc_groups if g[0] == "FID" and len(g[1]) >= 2}

    @property
    def primary_ssrcs(self) -> list[int]:
        repair = set(self.rtx_ssrcs.values())
        return [s for s in self.ssrcs if s not in repair]

    @property
    def rtx_payload_types(self) -> dict[int, int]:
        """Media payload type -> RTX payload type."""
        return {c.apt: pt for pt, c in self.codecs.items() if c.is_rtx and c.apt is not None}

    def extension_id(self, uri: str) -> int | None:
        return next((i for i, u in self.extmaps.items() if u == uri), None)

    def codec(self, name: str) -> CodecInfo | None:
        """First codec of that name (case-insensitive), in m-line preference order."""
        for fmt in self.formats:
            codec = self.codecs.get(int(fmt)) if fmt.isdigit() else None
            if codec is not None and codec.name.lower() == name.lower():
                return codec
        return None

    @property
    def media_codecs(self) -> list[CodecInfo]:
        """Non-RTX codecs in preference order."""
        out = []
        for fmt in self.formats:
            codec = self.codecs.get(int(fmt)) if fmt.isdigit() else None
            if codec is not None and not codec.is_rtx:
                out.append(codec)
        return out


@dataclass
class ParsedSdp:
    media: list[MediaSection]
    bundle: list[str] = field(default_factory=list)
    ice_ufrag: str | None = None
    ice_pwd: str | None = None

    def by_mid(self, mid: str) -> MediaSection | None:
        return next((m for m in self.media if m.mid == mid), None)


_EXTMAP_RE = re.compile(r"^a=extmap:(\d+)(?:/\w+)?\s+(\S+)")


def split_sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    """Session-level lines and one list of lines per m-section (empty lines dropped)."""
    session: list[str] = []
    sections: list[list[str]] = []
    for line in sdp.splitlines():
        if not line:
            continue
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    return session, sections


def join_sections(session: list[str], sections: Iterable[list[str]]) -> str:
    lines = list(session)
    for section in sections:
        lines += section
    return EOL.join(lines) + EOL


def _parse_fmtp(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in value.split(";"):
        item = item.strip()
        if not item:
            continue
        key, sep, val = item.partition("=")
        out[key.strip()] = val.strip() if sep else ""
    return out


def _parse_section(index: int, lines: list[str], ice: dict[str, str]) -> MediaSection:
    parts = lines[0][2:].split()
    kind = parts[0] if parts else ""
    port = int(parts[1].split("/")[0]) if len(parts) > 1 and parts[1].split("/")[0].isdigit() else 0
    media = MediaSection(
        index=index,
        kind=kind,
        port=port,
        protocol=parts[2] if len(parts) > 2 else "",
        formats=parts[3:],
    )
    for line in lines[1:]:
        if not line.startswith("a="):
            continue
        attr, _, value = line[2:].partition(":")
        if attr in DIRECTIONS and not value:
            media.direction = attr
        elif attr == "mid":
            media.mid = value.strip()
        elif attr == "msid":
            bits = value.split()
            if bits:
                media.msid = (bits[0], bits[1] if len(bits) > 1 else "")
        elif attr == "rid":
            bits = value.split(None, 2)
            if len(bits) >= 2:
                media.rids.append(RidInfo(bits[0], bits[1], bits[2] if len(bits) > 2 else ""))
        elif attr == "simulcast":
            bits = value.split()
            for i in range(0, len(bits) - 1, 2):
                media.simulcast[bits[i]] = bits[i + 1]
        elif attr == "ssrc":
            ssrc_str, _, desc = value.partition(" ")
            if not ssrc_str.isdigit():
                continue
            info = media.ssrcs.setdefault(int(ssrc_str), {})
            key, _, val = desc.partition(":")
            if key:
                info[key] = val
        elif attr == "ssrc-group":
            bits = value.split()
            if bits:
                media.ssrc_groups.append((bits[0], [int(b) for b in bits[1:] if b.isdigit()]))
        elif attr == "extmap":
            match = _EXTMAP_RE.match(line)
            if match:
                media.extmaps[int(match.group(1))] = match.group(2)
        elif attr == "rtpmap":
            pt_str, _, desc = value.partition(" ")
            bits = desc.split("/")
            if pt_str.isdigit() and len(bits) >= 2 and bits[1].isdigit():
                codec = media.codecs.setdefault(int(pt_str), CodecInfo(int(pt_str), bits[0], int(bits[1])))
                codec.name, codec.clock_rate = bits[0], int(bits[1])
                if len(bits) > 2 and bits[2].isdigit():
                    codec.channels = int(bits[2])
        elif attr in ("fmtp", "rtcp-fb"):
            pt_str, _, desc = value.partition(" ")
            if not pt_str.isdigit():
                continue  # "a=rtcp-fb:* nack" applies to all; not needed here
            codec = media.codecs.setdefault(int(pt_str), CodecInfo(int(pt_str), "", 0))
            if attr == "fmtp":
                codec.fmtp.update(_parse_fmtp(desc))
            else:
                codec.rtcp_fb.append(desc.strip())
        elif attr == "sctp-port" and value.strip().isdigit():
            media.sctp_port = int(value)
        elif attr == "max-message-size" and value.strip().isdigit():
            media.max_message_size = int(value)
        elif attr in ("ice-ufrag", "ice-pwd"):
            ice.setdefault(attr, value.strip())
    # "a=ssrc:<n> msid:<stream> <track>" (Plan B style) when there is no a=msid line
    if media.msid is None:
        for info in media.ssrcs.values():
            bits = info.get("msid", "").split()
            if bits:
                media.msid = (bits[0], bits[1] if len(bits) > 1 else "")
                break
    # drop fmtp/rtcp-fb entries that had no rtpmap
    media.codecs = {pt: c for pt, c in media.codecs.items() if c.name}
    return media


def parse_sdp(sdp: str) -> ParsedSdp:
    session, sections = split_sections(sdp)
    ice: dict[str, str] = {}
    bundle: list[str] = []
    for line in session:
        if line.startswith("a=group:BUNDLE"):
            bundle = line.split()[1:]
        elif line.startswith("a=ice-ufrag:"):
            ice["ice-ufrag"] = line.split(":", 1)[1].strip()
        elif line.startswith("a=ice-pwd:"):
            ice["ice-pwd"] = line.split(":", 1)[1].strip()
    media = [_parse_section(i, lines, ice) for i, lines in enumerate(sections)]
    return ParsedSdp(media=media, bundle=bundle, ice_ufrag=ice.get("ice-ufrag"), ice_pwd=ice.get("ice-pwd"))


# --------------------------------------------------------------------------- munging


def _section_mid(lines: list[str]) -> str | None:
    for line in lines:
        if line.startswith("a=mid:"):
            return line[6:].strip()
    return None


def _set_direction(lines: list[str], direction: str) -> list[str]:
    out = []
    placed = False
    for line in lines:
        if line[2:] in DIRECTIONS and line.startswith("a="):
            if not placed:
                out.append("a=" + direction)
                placed = True
            continue
        out.append(line)
    if not placed:
        out.append("a=" + direction)
    return out


def _insert_before_candidates(lines: list[str], extra: list[str]) -> list[str]:
    """Insert media attributes before the ICE candidate block (purely cosmetic)."""
    for i, line in enumerate(lines):
        if line.startswith(("a=candidate:", "a=end-of-candidates")):
            return lines[:i] + extra + lines[i:]
    return lines + extra


def munge_publisher_answer(offer_sdp: str, answer_sdp: str) -> str:
    """Rewrite aiortc's answer to a client's publisher offer.

    For each offered audio/video m-line (matched by mid, else by index):

    * ``a=rid:<x> send`` + ``a=simulcast:send <list>`` -> the answer gets ``a=rid:<x> recv`` for
      each offered rid and ``a=simulcast:recv <list>``, plus the offer's RID / repaired-RID
      extmaps if aiortc left them out;
    * offered ``recvonly`` / ``inactive`` -> the answer m-line becomes ``inactive`` and carries no
      ``a=msid`` (we never send on the publisher PC).
    """
    offer = parse_sdp(offer_sdp)
    session, sections = split_sections(answer_sdp)
    out_sections = []
    for index, lines in enumerate(sections):
        mid = _section_mid(lines)
        offered = offer.by_mid(mid) if mid is not None else None
        if offered is None and index < len(offer.media):
            offered = offer.media[index]
        if offered is None or offered.kind not in ("audio", "video"):
            out_sections.append(lines)
            continue
        if offered.direction in ("recvonly", "inactive"):
            lines = [line for line in _set_direction(lines, "inactive") if not line.startswith("a=msid:")]
        elif offered.is_simulcast_send and offered.direction in ("sendonly", "sendrecv"):
            lines = [line for line in lines if not line.startswith(("a=rid:", "a=simulcast:"))]
            extra = []
            answered_uris = {m.group(2) for m in map(_EXTMAP_RE.match, lines) if m}
            for uri in (RID_URI, REPAIRED_RID_URI):
                ext_id = offered.extension_id(uri)
                if ext_id is not None and uri not in answered_uris:
                    extra.append(f"a=extmap:{ext_id} {uri}")
            extra += [f"a=rid:{rid} recv" for rid in offered.send_rids]
            extra.append(f"a=simulcast:recv {offered.simulcast['send']}")
            lines = _insert_before_candidates(lines, extra)
        out_sections.append(lines)
    return join_sections(session, out_sections)


def remove_extmaps(sdp: str, uris: Iterable[str]) -> str:
    """Drop the ``a=extmap`` lines of the given URIs from every m-section."""
    drop = set(uris)
    session, sections = split_sections(sdp)
    cleaned = []
    for lines in sections:
        kept = []
        for line in lines:
            match = _EXTMAP_RE.match(line)
            if match and match.group(2) in drop:
                continue
            kept.append(line)
        cleaned.append(kept)
    return join_sections(session, cleaned)


def strip_inactive_msids(sdp: str) -> str:
    """Remove stream identity from m-sections that carry no media (``a=inactive``).

    An unsubscribed track keeps its m-line (aiortc cannot recycle one), and subscribing to the
    same track again adds a new m-line with the same msid; libwebrtc refuses an offer where two
    sections share an msid, so the dead section must not claim it any more.
    """
    session, sections = split_sections(sdp)
    cleaned = []
    for lines in sections:
        if "a=inactive" in lines:
            lines = [line for line in lines
                     if not line.startswith("a=msid:") and not (line.startswith("a=ssrc:") and " msid:" in line)]
        cleaned.append(lines)
    return join_sections(session, cleaned)
