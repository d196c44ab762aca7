"""Signal-side admission, pure parts: authentication, join grants, permissions from claims."""

from __future__ import annotations

import time
from datetime import timedelta

import jwt
import pytest
from livekit import api as lk
from livekit.protocol import models

from services.signal.admission import HttpError, authenticate, check_join_grants, permission_from_claims
from shared.auth import Claims, TokenVerifier, VideoGrant, mint_token

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

KEY, SECRET = "APIkey", "a-secret-of-at-least-32-bytes-long!!"
VERIFIER = TokenVerifier({KEY: SECRET})


def token(**changes: object) -> str:
    fields: dict[str, object] = {"identity": "alice", "video": VideoGrant(room_join=True, room="lobby")}
    fields.update(changes)
    return mint_token(KEY, SECRET, **fields)  # type: ignore[arg-type]


def claims(**video: object) -> Claims:
    return Claims(identity="alice", video=VideoGrant(**video))  # type: ignore[arg-type]


# --- authenticate ------------------------------------------------------------------------------


def test_authenticate_with_bearer_header() -> None:
    c = authenticate(VERIFIER, f"Bearer {token()}", None)
    assert (c.identity, c.api_key, c.video.room) == ("alice", KEY, "lobby")


def test_authenticate_with_query_token() -> None:
    assert authenticate(VERIFIER, None, token()).identity == "alice"


def test_header_wins_over_query_token() -> None:
    c = authenticate(VERIFIER, f"Bearer {token(identity='header')}", token(identity="query"))
    assert c.identity == "header"


def test_livekit_api_token_accepted() -> None:
    t = (lk.AccessToken(KEY, SECRET).with_identity("bob").with_name("Bob")
         .with_grants(lk.VideoGrants(room_join=True, room="r1", can_publish=False)).to_jwt())
    c = authenticate(VERIFIER, None, t)
    assert (c.identity, c.name, c.video.room, c.video.can_publish) == ("bob", "Bob", "r1", False)


@pytest.mark.parametrize(("header", "query"), [(None, None), (None, ""), ("", None), ("Bearer ", None),
                                               ("Bearer    ", None)])
def test_no_token_is_401(header: str | None, query: str | None) -> None:
    with pytest.raises(HttpError) as info:
        authenticate(VERIFIER, header, query)
    assert info.value.status == 401
    assert info.value.message == "no permissions to access the room"


def test_header_without_bearer_prefix_is_401() -> None:
    with pytest.raises(HttpError) as info:
        authenticate(VERIFIER, token(), None)
    assert info.value.status == 401
    assert "Bearer" in info.value.message


def test_unknown_api_key_is_401() -> None:
    t = mint_token("otherkey", SECRET, identity="alice")
    with pytest.raises(HttpError) as info:
        authenticate(VERIFIER, None, t)
    assert (info.value.status, info.value.message) == (401, "invalid API key")


def test_wrong_secret_is_401() -> None:
    t = mint_token(KEY, "some-other-secret-of-32-bytes-at-least", identity="alice")
    with pytest.raises(HttpError) as info:
        authenticate(VERIFIER, None, t)
    assert (info.value.status, info.value.message) == (401, "invalid token signature")


def test_expired_token_is_401() -> None:
    now = int(time.time())
    t = jwt.encode({"iss": KEY, "sub": "alice", "nbf": now - 7200, "exp": now - 3600}, SECRET, algorithm="HS256")
    with pytest.raises(HttpError) as info:
        authenticate(VERIFIER, None, t)
    assert (info.value.status, info.value.message) == (401, "token expired")


def test_garbage_token_is_401() -> None:
    with pytest.raises(HttpError) as info:
        authenticate(VERIFIER, "Bearer not.a.jwt", None)
    assert info.value.status == 401
    assert info.value.message.startswith("invalid authorization token")


def test_short_ttl_token_still_valid() -> None:
    assert authenticate(VERIFIER, None, mint_token(KEY, SECRET, identity="x", ttl=timedelta(seconds=5))).identity == "x"


# --- check_join_grants -------------------------------------------------------------------------


def test_join_grants_return_room() -> None:
    assert check_join_grants(claims(room_join=True, room="lobby")) == "lobby"


@pytest.mark.parametrize("room_join", [None, False])
def test_no_room_join_is_401(room_join: bool | None) -> None:
    with pytest.raises(HttpError) as info:
        check_join_grants(claims(room_join=room_join, room="lobby"))
    assert info.value.status == 401
    assert info.value.message == "permissions denied: token has no roomJoin grant"


def test_no_identity_is_400() -> None:
    with pytest.raises(HttpError) as info:
        check_join_grants(Claims(identity="", video=VideoGrant(room_join=True, room="lobby")))
    assert (info.value.status, info.value.message) == (400, "identity cannot be empty")


def test_no_room_is_400() -> None:
    with pytest.raises(HttpError) as info:
        check_join_grants(claims(room_join=True))
    assert (info.value.status, info.value.message) == (400, "no room name")


def test_room_join_checked_before_identity() -> None:
    with pytest.raises(HttpError) as info:
        check_join_grants(Claims(identity="", video=VideoGrant(room="lobby")))
    assert info.value.status == 401


def test_join_grants_from_a_verified_token() -> None:
    c = authenticate(VERIFIER, None, token(video=VideoGrant(room_join=True, room="r9")))
    assert check_join_grants(c) == "r9"
    c = authenticate(VERIFIER, None, token(video=VideoGrant(room="r9")))
    with pytest.raises(HttpError):
        check_join_grants(c)


# --- permission_from_claims --------------------------------------------------------------------


def test_permission_defaults_when_token_is_silent() -> None:
    p = permission_from_claims(claims(room_join=True, room="r"))
    assert (p.can_subscribe, p.can_publish, p.can_publish_data) == (True, True, True)
    assert p.can_publish_sources == []
    assert (p.can_update_metadata, p.hidden, p.recorder, p.agent) == (False, False, False, False)


def test_publish_data_follows_publish_when_absent() -> None:
    p = permission_from_claims(claims(can_publish=False))
    assert (p.can_publish, p.can_publish_data) == (False, False)


def test_explicit_publish_data_overrides_publish() -> None:
    p = permission_from_claims(claims(can_publish=False, can_publish_data=True))
    assert (p.can_publish, p.can_publish_data) == (False, True)
    p = permission_from_claims(claims(can_publish=True, can_publish_data=False))
    assert (p.can_publish, p.can_publish_data) == (True, False)


def test_can_subscribe_false() -> None:
    assert permission_from_claims(claims(can_subscribe=False)).can_subscribe is False


def test_sources_map_to_livekit_track_source_values() -> None:
    p = permission_from_claims(claims(can_publish_sources=[
        "camera", "MICROPHONE", "Screen_Share", "screen_share_audio", "unknown", ""]))
    assert p.can_publish_sources == [models.TrackSource.CAMERA, models.TrackSource.MICROPHONE,
                                     models.TrackSource.SCREEN_SHARE, models.TrackSource.SCREEN_SHARE_AUDIO]
    assert p.can_publish_sources == [1, 2, 3, 4]


def test_flags_copied() -> None:
    p = permission_from_claims(claims(can_update_own_metadata=True, hidden=True, recorder=True, agent=True))
    assert (p.can_update_metadata, p.hidden, p.recorder, p.agent) == (True, True, True, True)


def test_permission_from_livekit_api_token() -> None:
    t = (lk.AccessToken(KEY, SECRET).with_identity("bob")
         .with_grants(lk.VideoGrants(room_join=True, room="r", can_publish=True, can_subscribe=False,
                                     can_publish_sources=["microphone", "screen_share"],
                                     can_update_own_metadata=True)).to_jwt())
    p = permission_from_claims(authenticate(VERIFIER, None, t))
    assert (p.can_publish, p.can_subscribe, p.can_update_metadata) == (True, False, True)
    assert p.can_publish_sources == [2, 3]
