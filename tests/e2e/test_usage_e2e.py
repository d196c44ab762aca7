"""Bandwidth metering end to end: a 60 s session (one publisher, three subscribers, LiveKit's Python
SDK) against `meshrtc dev`, with the billing service SIGKILLed mid-session (the dev supervisor
restarts it). Billing must report, per participant and direction, the bytes the media node
counted on its sockets (its participant-total usage samples) within 1 %, and a downstream total
within 2 % of what the clients' own WebRTC stats say they received. Then `GET /usage` and
`meshrtc usage` serve the same numbers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from livekit import rtc

from shared.auth import Claims, VideoGrant, mint_token
from shared.contracts.subjects import stream_name, usage_subject

from .conftest import API_KEY, API_SECRET, DevServer
from .sdk_helpers import publish_synthetic, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore:.*HMAC key.*")]

SESSION_S = 60.0
KILL_AT_S = 25.0
ROOM = "billing-e2e"
SUBSCRIBERS = ("sub-1", "sub-2", "sub-3")


def billing_pid(dev: DevServer) -> int | None:
    """The `meshrtc serve billing` child of our own dev supervisor (None while it restarts)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == dev.process.pid and b"serve" in cmdline and b"billing" in cmdline:
            return int(entry.name)
    return None


async def media_counted(nats_url: str, room: str) -> dict[tuple[str, str], dict[str, int]]:
    """Sum of the media node's participant-total samples in the USAGE stream, per (identity,
    direction): the node's socket counters."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        stream = stream_name("usage", "dc1")
        subject = usage_subject("dc1", room)
        info = await js.stream_info(stream)
        totals: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"bytes": 0, "packets": 0,
                                                                             "connection_ms": 0})
        seen: set[str] = set()
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except Exception:
                continue
            if msg.subject != subject:
                continue
            env = json.loads(msg.data)
            p = env["payload"]
            if p["track_sid"] or env["id"] in seen:
                continue
            seen.add(env["id"])
            entry = totals[(p["identity"], p["direction"])]
            entry["bytes"] += p["bytes"]
            entry["packets"] += p["packets"]
            entry["connection_ms"] += p["connection_ms"]
        return dict(totals)
    finally:
        await nc.close()


def admin_token() -> str:
    return mint_token(API_KEY, API_SECRET, Claims(identity="ops", video=VideoGrant(room_list=True)))


def get_usage(dev: DevServer, **params: str) -> dict[str, Any]:
    response = httpx.get(dev.http_url + "/usage", params=params,
                         headers={"Authorization": f"Bearer {admin_token()}"}, timeout=20)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def billed_by_participant(doc: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(p["identity"], direction): nbytes for p in doc["participants"]
            for direction, nbytes in p["bytes"].items() if direction in ("upstream", "downstream")}


def usage_cli(dev: DevServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshrtc", "usage", *args, "--url", dev.http_url, "--api-key",
                           API_KEY, "--api-secret", API_SECRET], capture_output=True, text=True, timeout=60)


async def received_bytes(room: rtc.Room) -> int:
    """What the client says it received: transport bytes_received over both peer connections."""
    stats = await room.get_rtc_stats()
    total = 0
    for report in list(stats.publisher_stats) + list(stats.subscriber_stats):
        if report.WhichOneof("stats") == "transport":
            total += report.transport.transport.bytes_received
    return total


async def test_sixty_second_session_billed_exactly_through_a_billing_crash(dev_server: DevServer) -> None:
    publisher_room = rtc.Room()
    subscriber_rooms = [rtc.Room() for _ in SUBSCRIBERS]
    subscribed: set[str] = set()
    for identity, room in zip(SUBSCRIBERS, subscriber_rooms, strict=True):
        room.on("track_subscribed", lambda track, pub, participant, who=identity: subscribed.add(
            f"{who}:{pub.sid}"))
    publisher = None
    killed_pid = 0
    client_received: dict[str, int] = {}
    try:
        started = time.monotonic()
        for identity, room in zip(SUBSCRIBERS, subscriber_rooms, strict=True):
            await room.connect(dev_server.url, dev_server.token(identity, ROOM))
        await publisher_room.connect(dev_server.url, dev_server.token("publisher", ROOM))
        publisher = await publish_synthetic(publisher_room, 640, 360, simulcast=False)
        assert await wait_for(lambda: len(subscribed) == 2 * len(SUBSCRIBERS), 30), subscribed

        await asyncio.sleep(max(0.0, KILL_AT_S - (time.monotonic() - started)))
        pid = billing_pid(dev_server)
        assert pid, "no billing child under the dev supervisor"
        killed_pid = pid
        os.kill(killed_pid, signal.SIGKILL)  # mid-session, mid-batch maybe: nothing may be lost or doubled
        assert await wait_for(lambda: billing_pid(dev_server) not in (None, killed_pid), 20, 0.2), \
            "billing not restarted"

        await asyncio.sleep(max(0.0, SESSION_S - (time.monotonic() - started)))
        # Stop the media first so nothing but RTCP flows between the clients' stats and their leave.
        await publisher.stop()
        publisher = None
        await asyncio.sleep(1.0)
        for identity, room in zip(("publisher", *SUBSCRIBERS), (publisher_room, *subscriber_rooms), strict=True):
            client_received[identity] = await received_bytes(room)
    finally:
        if publisher is not None:
            await publisher.stop()
        for room in (publisher_room, *subscriber_rooms):
            await room.disconnect()
    session_s = time.monotonic() - started
    assert "billing (billing-dc1) exited with -9; restarting" in dev_server.log()

    # The media node publishes a last sample per participant as its session closes; billing has
    # applied everything (the killed process's unacked batch comes back after ack_wait) once its
    # numbers stop moving and agree with the stream.
    counted: dict[tuple[str, str], dict[str, int]] = {}
    billed: dict[tuple[str, str], int] = {}

    async def settled() -> bool:
        nonlocal counted, billed
        counted = await media_counted(dev_server.nats_url, ROOM)
        billed = billed_by_participant(get_usage(dev_server, room=ROOM))
        return len(counted) == 8 and all(billed.get(k) == v["bytes"] for k, v in counted.items())

    deadline = time.monotonic() + 60
    while not await settled() and time.monotonic() < deadline:
        await asyncio.sleep(1)

    print(f"session {session_s:.1f}s; billing pid {killed_pid} killed at {KILL_AT_S:.0f}s")
    for key in sorted(counted):
        print(f"  {key[0]:<10} {key[1]:<10} media {counted[key]['bytes']:>11,d}  billed {billed.get(key, 0):>11,d}")
    assert len(counted) == 8, counted  # 4 participants x up/down
    for key, media in counted.items():
        assert media["bytes"] > 0, key
        assert abs(billed.get(key, 0) - media["bytes"]) <= 0.01 * media["bytes"], (key, billed.get(key), media)

    # Downstream: billing vs the clients' own transport stats.
    billed_down = sum(v for (_, direction), v in billed.items() if direction == "downstream")
    clients_down = sum(client_received.values())
    print(f"  downstream billed {billed_down:,d} vs clients received {clients_down:,d} "
          f"({(billed_down - clients_down) / clients_down:+.3%}); per client {client_received}")
    assert clients_down > 1_000_000  # three subscribers of a 60 s video
    assert abs(billed_down - clients_down) <= 0.02 * clients_down

    # Connection time: each participant about the session length, billed in whole minutes.
    doc = get_usage(dev_server, room=ROOM)
    for p in doc["participants"]:
        assert SESSION_S - 10 <= p["connection_ms"] / 1000 <= session_s + 15, p
        assert p["connection_minutes"] == -(-p["connection_ms"] // 60_000)
    cost = doc["totals"]["cost"]
    assert cost["bandwidth"]["upstream"] == 0
    assert cost["bandwidth"]["downstream"] == pytest.approx(
        sum(-(-p["bytes"]["downstream"] // 10_000_000) * 0.01 for p in doc["participants"]) * 0.12)
    assert doc["rows"] and all(r["room"] == ROOM for r in doc["rows"])
    assert sum(r["bytes"] for r in doc["rows"] if r["direction"] == "downstream") == billed_down

    # The same through the CLI.
    cli = await asyncio.to_thread(usage_cli, dev_server, "--room", ROOM, "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["totals"]["bytes"] == doc["totals"]["bytes"]
    text = await asyncio.to_thread(usage_cli, dev_server, "--room", ROOM, "--from", "1h")
    assert text.returncode == 0, text.stderr
    assert f"{billed_down:,d} bytes" in text.stdout
