"""The DC's NATS server restarted mid-call, with exactly-once accounting. A dev-style deployment
(room, billing, media, signal, each a `meshrtc serve` process, SQLite) runs a call; its NATS
server is stopped (SIGTERM; SIGKILL in the second run) for a few seconds and started again on
the same port with the same JetStream store, as a DC's server restarts. While the bus is down a
participant leaves, and the media node keeps forwarding and metering: its departure, webhooks
and usage samples wait in the media node's outbox. Nobody else is disconnected, no service
exits, the others see the departure, and once things settle every event is in the stream once
and in the database once, everyone who took part joined and left once, every webhook was
delivered once, no usage sample is in the stream twice, and the rollups equal the bytes the
media node counted.

(Nobody can *join* while the bus is down: admission is a request to the room service over NATS.)
"""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path

import pytest
from livekit import rtc

from .accounting import Deployment, WebhookLog, check_participants, check_usage, check_webhooks, payload, settled_events
from .sdk_helpers import Received, count_media, publish_synthetic, record_connection_events, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
warnings.filterwarnings("ignore", message=".*HMAC key.*")

ROOM = "nats-restart"
OUTAGE_S = 6.0  # longer than the usage interval (5 s): samples are produced during it


async def connect_when_back(deployment: Deployment, identity: str) -> rtc.Room:
    """Join as soon as the services have reconnected (a join needs room and media on the bus)."""
    for _attempt in range(15):
        room = rtc.Room()
        try:
            await room.connect(deployment.url, deployment.token(identity), rtc.RoomOptions(connect_timeout=10))
            return room
        except rtc.ConnectError:
            await asyncio.sleep(1)
    raise AssertionError(f"{identity} could not join after NATS came back")


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
async def test_nats_restarted_mid_call(stop: str, tmp_path: Path) -> None:
    hooks = WebhookLog(ROOM)
    deployment = Deployment(f"sqlite:///{tmp_path / 'meshrtc.db'}", hooks.url, tmp_path, ROOM)
    speaker, viewer, leaver = rtc.Room(), rtc.Room(), rtc.Room()
    connection_events = record_connection_events({"speaker": speaker, "viewer": viewer})
    received = Received()
    count_media(viewer, received)
    frames = received.video_times

    publisher = None
    async with hooks.running():
        try:
            await asyncio.to_thread(deployment.start)
            await viewer.connect(deployment.url, deployment.token("viewer"))
            await speaker.connect(deployment.url, deployment.token("speaker"))
            await leaver.connect(deployment.url, deployment.token("leaver"))
            publisher = await publish_synthetic(speaker, 320, 180, audio=False, simulcast=False)
            assert await wait_for(lambda: len(frames) > 30, 30), "no video before the restart"
            await asyncio.sleep(6)  # usage samples and webhooks already through

            await asyncio.to_thread(deployment.stop_nats, stop == "sigkill")
            down_at, down_ms = time.monotonic(), int(time.time() * 1000)
            await asyncio.sleep(OUTAGE_S / 3)
            await leaver.disconnect()  # its departure and last usage sample wait in the outbox
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
            frames_in_outage = sum(1 for t in frames if t > down_at)
            back_ms = int(time.time() * 1000)
            await asyncio.to_thread(deployment.start_nats)
            outage = time.monotonic() - down_at
            print(f"NATS down {outage:.1f}s; {frames_in_outage} video frames meanwhile")
            assert frames_in_outage > OUTAGE_S * 10, "video stalled with the bus"

            again = await connect_when_back(deployment, "again")
            await again.disconnect()
            assert await wait_for(lambda: set(viewer.remote_participants) == {"speaker"}, 10), \
                f"the viewer sees {sorted(viewer.remote_participants)}, not just the speaker"
            await asyncio.sleep(2)  # the call goes on after the restart (and every bridge resyncs)
            deployment.check_alive()
            assert not any(connection_events.values()), connection_events
        finally:
            if publisher is not None:
                await publisher.stop()
            for room in (speaker, viewer, leaver):
                await room.disconnect()
            for task in received.tasks:
                task.cancel()

        try:
            events = await settled_events(deployment, left=4)
            check_participants(events, ["viewer", "speaker", "leaver", "again"])
            departure = next(e for e in events if e["type"] == "participant.left"
                             and payload(e)["identity"] == "leaver")
            assert down_ms <= int(departure["ts"]) < back_ms, \
                f"the leaver's departure was not produced while NATS was down: {departure}"
            webhooks = await check_webhooks(hooks, events, deployment.settings.database_url)
            usage = await check_usage(deployment)
            during = [e for e in usage.samples if down_ms < int(payload(e)["end_ms"]) <= back_ms]  # type: ignore[call-overload]
            print(f"NATS restart ({stop}): outage {outage:.1f}s, {len(events)} events, {webhooks} webhooks, "
                  f"{len(usage.samples)} usage samples ({len(during)} produced during the outage)")
            assert during, "no usage sample was produced while NATS was down"
            deployment.check_alive()
        finally:
            deployment.stop()
