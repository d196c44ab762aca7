"""LiveKit's server SDK (`livekit-api`) against meshrtc's RoomService, with the effects on
connected Python SDK clients."""

from __future__ import annotations

import asyncio
import warnings

import httpx
import pytest
from livekit import api, rtc

from .conftest import API_KEY, API_SECRET, DevServer
from .sdk_helpers import publish_synthetic, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
warnings.filterwarnings("ignore", message=".*HMAC key.*")


def lkapi(server: DevServer, key: str = API_KEY, secret: str = API_SECRET) -> api.LiveKitAPI:
    return api.LiveKitAPI(server.http_url, key, secret)


async def wait_participants(client: api.LiveKitAPI, room: str, count: int, timeout: float = 10) -> list[object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        response = await client.room.list_participants(api.ListParticipantsRequest(room=room))
        if len(response.participants) == count or loop.time() > deadline:
            return list(response.participants)
        await asyncio.sleep(0.2)


async def test_every_room_service_method(dev_server: DevServer) -> None:
    client = lkapi(dev_server)
    alice, bob = rtc.Room(), rtc.Room()
    publisher = None
    try:
        created = await client.room.create_room(api.CreateRoomRequest(name="admin-room", metadata="m0",
                                                                      empty_timeout=600, max_participants=10))
        assert created.sid.startswith("RM_") and created.metadata == "m0" and created.max_participants == 10
        again = await client.room.create_room(api.CreateRoomRequest(name="admin-room"))
        assert again.sid == created.sid  # idempotent
        rooms = await client.room.list_rooms(api.ListRoomsRequest(names=["admin-room"]))
        assert [r.name for r in rooms.rooms] == ["admin-room"]

        await alice.connect(dev_server.url, dev_server.token("alice", "admin-room"))
        await bob.connect(dev_server.url, dev_server.token("bob", "admin-room"))
        publisher = await publish_synthetic(alice, 640, 360)
        participants = await wait_participants(client, "admin-room", 2)
        assert sorted(p.identity for p in participants) == ["alice", "bob"]
        assert await wait_for(lambda: True, 0)

        async def alice_tracks() -> list[object]:
            info = await client.room.get_participant(api.RoomParticipantIdentity(room="admin-room",
                                                                                  identity="alice"))
            return list(info.tracks)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(await alice_tracks()) < 2 and loop.time() < deadline:
            await asyncio.sleep(0.2)
        tracks = await alice_tracks()
        assert len(tracks) == 2 and all(t.sid.startswith("TR_") for t in tracks)
        audio_sid = next(t.sid for t in tracks if t.type == 0)

        # Mute from the server: bob sees alice's audio muted.
        muted_seen: list[str] = []
        bob.on("track_muted", lambda participant, pub: muted_seen.append(pub.sid))
        muted = await client.room.mute_published_track(api.MuteRoomTrackRequest(
            room="admin-room", identity="alice", track_sid=audio_sid, muted=True))
        assert muted.track.sid == audio_sid and muted.track.muted
        assert await wait_for(lambda: audio_sid in muted_seen, 10)

        # Metadata change seen by the others.
        metadata_seen: list[str] = []
        bob.on("participant_metadata_changed", lambda p, old, new: metadata_seen.append(new))
        updated = await client.room.update_participant(api.UpdateParticipantRequest(
            room="admin-room", identity="alice", metadata="alice-meta", name="Alice A.", attributes={"k": "v"}))
        assert updated.metadata == "alice-meta" and updated.name == "Alice A." and updated.attributes["k"] == "v"
        assert await wait_for(lambda: "alice-meta" in metadata_seen, 10)

        # Room metadata.
        room_meta: list[str] = []
        bob.on("room_metadata_changed", lambda old, new: room_meta.append(new))
        room = await client.room.update_room_metadata(api.UpdateRoomMetadataRequest(room="admin-room",
                                                                                   metadata="m1"))
        assert room.metadata == "m1"
        assert await wait_for(lambda: "m1" in room_meta, 10)

        # Server data to one participant.
        data: list[tuple[bytes, str]] = []
        bob.on("data_received", lambda packet: data.append((packet.data, packet.topic)))
        await client.room.send_data(api.SendDataRequest(room="admin-room", data=b"from server", topic="ops",
                                                        kind=api.DataPacket.Kind.RELIABLE,
                                                        destination_identities=["bob"]))
        assert await wait_for(lambda: (b"from server", "ops") in data, 10)

        # Subscriptions: bob unsubscribes from alice's audio, then subscribes again.
        bob_sid = bob.local_participant.sid

        async def bob_receives() -> list[str]:
            return (await dev_server.node_stats()).subscriptions.get(bob_sid, [])

        assert audio_sid in await bob_receives()
        await client.room.update_subscriptions(api.UpdateSubscriptionsRequest(
            room="admin-room", identity="bob", track_sids=[audio_sid], subscribe=False))
        assert audio_sid not in await bob_receives()
        await client.room.update_subscriptions(api.UpdateSubscriptionsRequest(
            room="admin-room", identity="bob", track_sids=[audio_sid], subscribe=True))
        assert audio_sid in await bob_receives()
        remote = bob.remote_participants.get(alice.local_participant.identity)
        assert remote is not None

        # Revoking can_publish unpublishes alice's tracks.
        await client.room.update_participant(api.UpdateParticipantRequest(
            room="admin-room", identity="alice",
            permission=api.ParticipantPermission(can_publish=False, can_subscribe=True, can_publish_data=True)))
        assert await wait_for(lambda: len(remote.track_publications) == 0, 10)

        # Removal: alice is disconnected with the right reason.
        reasons: list[object] = []
        alice.on("disconnected", lambda reason: reasons.append(reason))
        await client.room.remove_participant(api.RoomParticipantIdentity(room="admin-room", identity="alice"))
        assert await wait_for(lambda: bool(reasons), 10)
        assert reasons[0] == rtc.DisconnectReason.PARTICIPANT_REMOVED
        assert [p.identity for p in await wait_participants(client, "admin-room", 1)] == ["bob"]

        # Deleting the room disconnects bob with ROOM_DELETED.
        bob_reasons: list[object] = []
        bob.on("disconnected", lambda reason: bob_reasons.append(reason))
        await client.room.delete_room(api.DeleteRoomRequest(room="admin-room"))
        assert await wait_for(lambda: bool(bob_reasons), 10)
        assert bob_reasons[0] == rtc.DisconnectReason.ROOM_DELETED
        rooms = await client.room.list_rooms(api.ListRoomsRequest(names=["admin-room"]))
        assert not rooms.rooms
    finally:
        if publisher is not None:
            await publisher.stop()
        await alice.disconnect()
        await bob.disconnect()
        await client.aclose()


async def test_errors_are_twirp_errors(dev_server: DevServer) -> None:
    client = lkapi(dev_server)
    try:
        with pytest.raises(api.TwirpError) as info:
            await client.room.list_participants(api.ListParticipantsRequest(room="no-such-room"))
        assert info.value.code == "not_found"
        with pytest.raises(api.TwirpError) as info:
            await client.room.get_participant(api.RoomParticipantIdentity(room="no-such-room", identity="x"))
        assert info.value.code == "not_found"
    finally:
        await client.aclose()
    # A token without the grants the method needs.
    join_only = dev_server.token("someone", "r1")
    async with httpx.AsyncClient() as http:
        for method in ("CreateRoom", "ListRooms", "ListParticipants"):
            response = await http.post(f"{dev_server.http_url}/twirp/livekit.RoomService/{method}", content=b"",
                                       headers={"Authorization": f"Bearer {join_only}",
                                                "Content-Type": "application/protobuf"})
            assert response.status_code == 403 and response.json()["code"] == "permission_denied"
        bad = await http.post(f"{dev_server.http_url}/twirp/livekit.RoomService/ListRooms", content=b"x",
                              headers={"Authorization": "Bearer not-a-jwt", "Content-Type": "application/protobuf"})
        assert bad.status_code == 401 and bad.json()["code"] == "unauthenticated"
        admin = api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(room_list=True)).to_jwt()
        garbage = await http.post(f"{dev_server.http_url}/twirp/livekit.RoomService/ListRooms",
                                  content=b"\xff\xff\xff\xff", headers={"Authorization": f"Bearer {admin}",
                                                                        "Content-Type": "application/protobuf"})
        assert garbage.status_code == 400 and garbage.json()["code"] == "malformed"
        as_json = await http.post(f"{dev_server.http_url}/twirp/livekit.RoomService/ListRooms", json={},
                                  headers={"Authorization": f"Bearer {admin}"})
        assert as_json.status_code == 200 and "rooms" in as_json.json()
        unknown = await http.post(f"{dev_server.http_url}/twirp/livekit.RoomService/Nope", content=b"",
                                  headers={"Authorization": f"Bearer {admin}"})
        assert unknown.status_code == 404 and unknown.json()["code"] == "bad_route"
    # The service keeps serving.
    client = lkapi(dev_server)
    try:
        assert (await client.room.list_rooms(api.ListRoomsRequest())) is not None
    finally:
        await client.aclose()
