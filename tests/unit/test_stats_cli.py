"""`meshrtc stats room`: the terminal view of a room document, and its argument handling."""

from __future__ import annotations

import pytest

from meshrtc.cli import build_parser, main
from meshrtc.commands.stats import format_room

DOC = {
    "room": "standup", "window_s": 15, "now_ms": 1_700_000_000_000,
    "tracks": [{"identity": "alice", "track_sid": "TR_cam", "kind": "video", "bitrate_bps": 1_234_000, "fps": 29.7,
                "packet_loss": 0.012, "jitter_ms": 3.4, "plis_total": 2, "subscribers": 2,
                "layers": [{"layer": 0, "fps": 30, "active": True}, {"layer": 2, "fps": 0, "active": False}],
                "dynacast_max_layer": 0}],
    "subscriptions": [
        {"identity": "bob", "track_sid": "TR_cam", "bitrate_bps": 150_000, "fps": 30.0, "packet_loss": 0.0,
         "jitter_ms": 1.0, "rtt_ms": 12.0, "nacks_total": 3, "plis_total": 1, "firs_total": 0, "layer": 0,
         "requested_layer": 0, "bandwidth_cap": 2, "paused": False},
        {"identity": "carol", "track_sid": "TR_cam", "bitrate_bps": 0, "fps": 0, "packet_loss": 0, "jitter_ms": 0,
         "rtt_ms": 0, "nacks_total": 0, "plis_total": 0, "firs_total": 0, "layer": -1, "requested_layer": 2,
         "bandwidth_cap": 2, "paused": True}],
    "switches": [{"at_ms": 1_700_000_000_000, "identity": "bob", "track_sid": "TR_cam", "from_layer": 2,
                  "to_layer": 1, "reason": "congestion"}],
}


def test_room_view_lists_tracks_legs_and_switches() -> None:
    text = format_room(DOC)
    track_line = next(line for line in text.splitlines() if line.startswith("alice"))
    assert "1,234" in track_line and "29.7" in track_line and "1.2" in track_line
    assert "q:30 f:0(off)" in track_line and track_line.rstrip().endswith("q")
    bob = next(line for line in text.splitlines() if line.startswith("bob"))
    assert "150" in bob and bob.rstrip().endswith("q (q/f)")
    assert next(line for line in text.splitlines() if line.startswith("carol")).rstrip().endswith("paused")
    assert "f -> h  congestion" in text


def test_empty_room_says_so() -> None:
    text = format_room({"room": "empty", "window_s": 15, "now_ms": 0, "tracks": [], "subscriptions": [],
                        "switches": []})
    assert "(no tracks reported)" in text and "(no subscriptions reported)" in text


def test_arguments_and_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["stats", "room", "my room", "--once", "--interval", "5"])
    assert (args.room, args.once, args.interval, args.window) == ("my room", True, 5.0, 15)
    code = main(["stats", "room", "r", "--once", "--url", "http://127.0.0.1:9", "--api-key", "k", "--api-secret",
                 "s" * 32, "--timeout", "1"])
    assert code == 1 and "cannot reach http://127.0.0.1:9/stats/rooms/r" in capsys.readouterr().err
