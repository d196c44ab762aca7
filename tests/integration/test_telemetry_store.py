"""Track analytics storage against a real nats-server and SQLite: telemetry events published on
TELEMETRY_<DC> are stored once, pruned past retention, and served per room over the signal
edge's GET /stats/rooms/{room} with the same token rules as /usage."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import sqlalchemy as sa

from services.billing.app import BillingService
from services.billing.telemetry import telemetry_samples
from services.signal.http import build_app
from shared.auth import Claims, TokenVerifier, VideoGrant, mint_token
from shared.bus import Bus
from shared.config import Settings
from shared.contracts.billing import RoomStatsQuery
from shared.contracts.subjects import telemetry_room_subject
from shared.db import upgrade
from shared.events import (
    Envelope,
    LayerSwitch,
    LayerSwitchReason,
    SubscriptionTelemetry,
    TrackKind,
    TrackTelemetry,
)
from shared.natsserver import NatsServer

from .test_billing import bus  # noqa: F401 - the fixture, used by name

pytestmark = [pytest.mark.filterwarnings("ignore:.*HMAC key.*")]

DC, KEY, SECRET = "dc1", "devkey", "secret"


@pytest.fixture
def settings(nats_server: NatsServer, tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    upgrade(url)
    return Settings(nats_url=nats_server.url, dc=DC, node_id="billing-test", database_url=url,
                    api_keys={KEY: SECRET}, telemetry_retention_s=3600)


def track_env(room: str, bytes_total: int, ts: int | None = None, project: str = KEY) -> Envelope:
    payload = TrackTelemetry(project=project, room=room, track_sid="TR_cam", participant_sid="PA_pub",
                             identity="pub", kind=TrackKind.VIDEO, interval_ms=3000, bytes_total=bytes_total,
                             bitrate_bps=bytes_total / 3 * 8, fps=30.0)
    return Envelope.new(payload, dc=DC, node="media-test", room=room, ts=ts)


def leg_env(room: str, frames: int, switches: list[LayerSwitch] | None = None) -> Envelope:
    payload = SubscriptionTelemetry(project=KEY, room=room, track_sid="TR_cam", publisher_sid="PA_pub",
                                    participant_sid="PA_sub", identity="sub", kind=TrackKind.VIDEO, interval_ms=3000,
                                    frames_total=frames, layer=1, switches=switches or [])
    return Envelope.new(payload, dc=DC, node="media-test", room=room)


def count_rows(service: BillingService) -> int:
    assert service.telemetry
    with service.telemetry.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(telemetry_samples)).scalar_one())


async def wait_rows(service: BillingService, n: int) -> None:
    deadline = time.monotonic() + 20
    while count_rows(service) < n:
        assert time.monotonic() < deadline, f"{count_rows(service)} rows stored, expected {n}"
        await asyncio.sleep(0.05)


async def test_stored_once_served_per_room_and_pruned(settings: Settings, bus: Bus) -> None:  # noqa: F811
    service = BillingService(settings)
    await service.start()
    try:
        switch = LayerSwitch(at_ms=int(time.time() * 1000), from_layer=2, to_layer=1,
                             reason=LayerSwitchReason.CONGESTION)
        first = track_env("r1", 1000)
        for env, room in [(first, "r1"), (leg_env("r1", 90, [switch]), "r1"), (track_env("r1", 5000), "r1"),
                          (track_env("other", 7), "other")]:
            kind = "track" if isinstance(env.payload, TrackTelemetry) else "subscription"
            await bus.publish_event(env, telemetry_room_subject(DC, kind, room))
        await wait_rows(service, 4)
        assert service.telemetry is not None
        assert service.telemetry.insert([first]) == 0  # a redelivery stores nothing
        assert count_rows(service) == 4

        stats = service.telemetry.room_stats(RoomStatsQuery(project=KEY, room="r1"))
        assert [t["bytes_total"] for t in stats["tracks"]] == [5000]  # the latest sample per track
        assert [(s["identity"], s["frames_total"], s["layer"]) for s in stats["subscriptions"]] == [("sub", 90, 1)]
        assert [(s["from_layer"], s["to_layer"], s["reason"]) for s in stats["switches"]] == [(2, 1, "congestion")]
        assert service.telemetry.room_stats(RoomStatsQuery(project="someone-else", room="r1"))["tracks"] == []

        old = track_env("r1", 1, ts=int(time.time() * 1000) - 7200_000)
        assert service.telemetry.insert([old]) == 1
        assert service.telemetry.prune(int(time.time() * 1000) - settings.telemetry_retention_s * 1000) == 1
        assert count_rows(service) == 4
    finally:
        await service.stop()


async def test_http_endpoint_checks_tokens_and_answers(settings: Settings, bus: Bus) -> None:  # noqa: F811
    def token(**grant: object) -> str:
        return mint_token(KEY, SECRET, Claims(identity="ops", video=VideoGrant(**grant)))  # type: ignore[arg-type]

    edge = SimpleNamespace(bus=bus, settings=settings, verifier=TokenVerifier({KEY: SECRET}), node_id="signal-test")
    app = build_app(edge)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as client:
        async def get(path: str, tok: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {tok}"} if tok else {}
            return await client.get(path, headers=headers)

        assert (await get("/stats/rooms/r1", token(room_list=True))).status_code == 503  # billing not running
        service = BillingService(settings)
        await service.start()
        try:
            await bus.publish_event(track_env("r1", 4242), telemetry_room_subject(DC, "track", "r1"))
            await wait_rows(service, 1)
            ok = await get("/stats/rooms/r1", token(room_list=True))
            assert ok.status_code == 200 and [t["bytes_total"] for t in ok.json()["tracks"]] == [4242]
            admin = await get("/stats/rooms/r1?window=60", token(room_admin=True, room="r1"))
            assert admin.status_code == 200 and admin.json()["window_s"] == 60
            assert (await get("/stats/rooms/r2", token(room_admin=True, room="r1"))).status_code == 403
            assert (await get("/stats/rooms/r1", token(room_join=True, room="r1"))).status_code == 403
            assert (await get("/stats/rooms/r1", None)).status_code == 401
            assert (await get("/stats/rooms/r1?window=0", token(room_list=True))).status_code == 400
            assert (await get("/stats/rooms/r1?window=abc", token(room_list=True))).status_code == 400
        finally:
            await service.stop()
