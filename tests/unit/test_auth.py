"""Access tokens and webhook signatures, checked for interoperability with livekit-api."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from datetime import timedelta

import jwt
import pytest
from livekit import api as lk
from livekit.protocol.agent_dispatch import RoomAgentDispatch
from livekit.protocol.room import RoomConfiguration

from shared.auth import (
    AuthError,
    Claims,
    TokenVerifier,
    VideoGrant,
    bearer_token,
    mint_token,
    sign_webhook,
    verify_webhook,
)

# livekit-api's verifier warns about LiveKit's customary short dev secrets; that is not under test.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

KEY = "APIkey123"
SECRET = "a-secret-that-is-long-enough-for-hs256-0123"
KEYS = {KEY: SECRET, "devkey": "secret"}


def verify(token: str, keys: dict[str, str] = KEYS) -> Claims:
    return TokenVerifier(keys).verify(token)


def error_of(token: str, keys: dict[str, str] = KEYS) -> AuthError:
    with pytest.raises(AuthError) as info:
        verify(token, keys)
    assert info.value.http_status == 401
    return info.value


# --- interoperability with livekit-api ---------------------------------------------------------


def test_livekit_minted_token_keeps_every_grant() -> None:
    grants = lk.VideoGrants(
        room_create=True, room_list=True, room_record=False, room_admin=True, room_join=True,
        room="studio", destination_room="overflow", can_publish=False, can_subscribe=True,
        can_publish_data=False, can_publish_sources=["camera", "screen_share"],
        can_update_own_metadata=True, ingress_admin=True, hidden=True, recorder=False, agent=True,
        can_manage_agent_session=True, can_subscribe_metrics=True,
    )
    config = RoomConfiguration(name="studio", empty_timeout=30, max_participants=8,
                               agents=[RoomAgentDispatch(agent_name="helper")])
    token = (
        lk.AccessToken(KEY, SECRET)
        .with_identity("alice").with_name("Alice").with_kind("agent").with_metadata('{"a":1}')
        .with_attributes({"team": "blue"}).with_grants(grants).with_room_preset("small")
        .with_room_config(config).with_sip_grants(lk.SIPGrants(admin=True, call=False))
        .to_jwt()
    )

    claims = verify(token)

    assert (claims.identity, claims.name, claims.kind) == ("alice", "Alice", "agent")
    assert claims.metadata == '{"a":1}'
    assert claims.attributes == {"team": "blue"}
    assert claims.api_key == KEY
    assert claims.room_preset == "small"
    assert claims.room_config == {"name": "studio", "emptyTimeout": 30, "maxParticipants": 8,
                                  "agents": [{"agentName": "helper"}]}
    assert claims.extra["sip"] == {"admin": True, "call": False}
    assert claims.expires_at is not None and claims.not_before is not None
    assert claims.expires_at - claims.not_before == 6 * 3600
    assert claims.video == VideoGrant(
        room_create=True, room_list=True, room_record=False, room_admin=True, room_join=True,
        room="studio", destination_room="overflow", can_publish=False, can_subscribe=True,
        can_publish_data=False, can_publish_sources=["camera", "screen_share"],
        can_update_own_metadata=True, ingress_admin=True, hidden=True, recorder=False, agent=True,
        can_manage_agent_session=True, can_subscribe_metrics=True,
    )


def test_meshrtc_minted_token_verifies_with_livekit_api() -> None:
    claims = Claims(
        identity="bob", name="Bob", kind="standard", metadata="meta", attributes={"k": "v"},
        video=VideoGrant(room_join=True, room="r1", can_publish=True, can_subscribe=False,
                         can_publish_data=False, can_publish_sources=["microphone"],
                         can_update_own_metadata=True, hidden=False, destination_room="r2"),
        room_preset="preset", room_config={"name": "r1", "emptyTimeout": 12, "maxParticipants": 3},
    )
    token = mint_token(KEY, SECRET, claims)

    got = lk.TokenVerifier(KEY, SECRET).verify(token)

    assert (got.identity, got.name, got.kind, got.metadata) == ("bob", "Bob", "standard", "meta")
    assert got.attributes == {"k": "v"}
    assert got.room_preset == "preset"
    assert got.room_config == RoomConfiguration(name="r1", empty_timeout=12, max_participants=3)
    assert got.video is not None
    assert got.video.room_join is True and got.video.room == "r1"
    assert got.video.can_publish is True
    assert got.video.can_subscribe is False and got.video.can_publish_data is False
    assert got.video.can_publish_sources == ["microphone"]
    assert got.video.can_update_own_metadata is True
    assert got.video.hidden is False  # False survives minimisation
    assert got.video.destination_room == "r2"


def test_round_trip_through_meshrtc_is_lossless() -> None:
    claims = Claims(
        identity="carol", name="Carol", kind="sip", metadata="m", attributes={"a": "1", "b": ""},
        video=VideoGrant(room_join=True, room="x", can_publish_sources=["camera"], agent=False),
        room_config={"agents": [{"agentName": "a"}]}, room_preset="p",
        extra={"sip": {"call": True}, "kindDetails": ["cloud_agent"]},
    )
    got = verify(mint_token(KEY, SECRET, claims, ttl=timedelta(minutes=10)))
    assert got.expires_at is not None and got.not_before is not None
    assert got.expires_at - got.not_before == 600
    assert got == Claims(**{**claims.__dict__, "api_key": KEY, "expires_at": got.expires_at,
                            "not_before": got.not_before})


def test_mint_accepts_keyword_fields() -> None:
    token = mint_token(KEY, SECRET, identity="dave", video=VideoGrant(room_join=True, room="r"))
    got = verify(token)
    assert got.identity == "dave" and got.video.room == "r"


def test_payload_drops_absent_and_empty_but_keeps_false() -> None:
    payload = Claims(identity="e", video=VideoGrant(room_join=True, room="r", hidden=False)).to_jwt_payload()
    assert payload == {"sub": "e", "video": {"roomJoin": True, "room": "r", "hidden": False}}
    assert Claims().to_jwt_payload() == {}


# --- grant defaults ---------------------------------------------------------------------------


def test_absent_publish_permissions_follow_the_go_server() -> None:
    token = jwt.encode({"iss": KEY, "sub": "u", "exp": int(time.time()) + 60,
                        "video": {"roomJoin": True, "room": "r"}}, SECRET, algorithm="HS256")
    grant = verify(token).video
    assert grant.can_publish is None and grant.can_publish_data is None
    assert grant.can_publish_effective() and grant.can_subscribe_effective()
    assert grant.can_publish_data_effective()

    no_publish = VideoGrant(can_publish=False)
    assert not no_publish.can_publish_data_effective()  # follows canPublish when absent
    assert VideoGrant(can_publish=False, can_publish_data=True).can_publish_data_effective()


def test_publish_sources_restrict_publishing() -> None:
    assert VideoGrant().can_publish_source("camera")
    restricted = VideoGrant(can_publish_sources=["microphone"])
    assert restricted.can_publish_source("microphone")
    assert not restricted.can_publish_source("camera")
    assert not VideoGrant(can_publish=False).can_publish_source("microphone")


# --- verification failures --------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30"])
def test_malformed_token(token: str) -> None:
    assert str(error_of(token)).startswith("invalid authorization token: ")


def test_unknown_api_key() -> None:
    token = mint_token("other-key", SECRET, identity="u")
    assert str(error_of(token)) == "invalid API key"


def test_missing_issuer_is_unknown_key() -> None:
    token = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert str(error_of(token)) == "invalid API key"


def test_expired_beyond_leeway_is_rejected() -> None:
    token = mint_token(KEY, SECRET, identity="u", ttl=timedelta(seconds=-120))
    assert str(error_of(token)) == "token expired"


def test_expired_inside_leeway_is_accepted() -> None:
    token = mint_token(KEY, SECRET, identity="u", ttl=timedelta(seconds=-30))
    assert verify(token).identity == "u"


def test_not_yet_valid_beyond_leeway() -> None:
    now = int(time.time())
    token = jwt.encode({"iss": KEY, "sub": "u", "nbf": now + 300, "exp": now + 600}, SECRET,
                       algorithm="HS256")
    assert str(error_of(token)) == "token not valid yet"


def test_wrong_secret() -> None:
    token = mint_token(KEY, "not-the-right-secret", identity="u")
    assert str(error_of(token)) == "invalid token signature"


def test_alg_none_is_rejected() -> None:
    token = jwt.encode({"iss": KEY, "sub": "u", "exp": int(time.time()) + 60}, None, algorithm="none")
    err = error_of(token)
    assert str(err).startswith("invalid authorization token: ")
    assert "'none'" in str(err)


def test_other_hmac_algorithms_are_rejected() -> None:
    token = jwt.encode({"iss": KEY, "sub": "u", "exp": int(time.time()) + 60}, SECRET, algorithm="HS512")
    assert "HS512" in str(error_of(token))


def test_missing_exp() -> None:
    token = jwt.encode({"iss": KEY, "sub": "u"}, SECRET, algorithm="HS256")
    assert "exp" in str(error_of(token))
    assert str(error_of(token)) == "token has no expiry (exp claim required)"


@pytest.mark.parametrize("extra", [{"video": {"roomJoin": "yes"}}, {"video": []}, {"attributes": {"a": 1}},
                                   {"name": 5}, {"roomConfig": "x"}])
def test_wrongly_typed_claims_are_malformed(extra: dict) -> None:
    token = jwt.encode({"iss": KEY, "sub": "u", "exp": int(time.time()) + 60, **extra}, SECRET,
                       algorithm="HS256")
    assert str(error_of(token)).startswith("invalid authorization token: ")


def test_identity_falls_back_to_jti() -> None:
    token = jwt.encode({"iss": KEY, "jti": "legacy", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert verify(token).identity == "legacy"


def test_custom_leeway() -> None:
    token = mint_token(KEY, SECRET, identity="u", ttl=timedelta(seconds=-30))
    with pytest.raises(AuthError, match="token expired"):
        TokenVerifier(KEYS, leeway=5).verify(token)


# --- bearer extraction ------------------------------------------------------------------------


def test_bearer_token_sources() -> None:
    assert bearer_token("Bearer abc", None) == "abc"
    assert bearer_token("Bearer abc", "query") == "abc"  # the header wins
    assert bearer_token(None, "query") == "query"
    assert bearer_token("", "query") == "query"  # an empty header counts as absent
    assert bearer_token(None, None) is None
    assert bearer_token(None, "") is None
    with pytest.raises(AuthError, match=r"invalid authorization header\. Must start with Bearer ") as info:
        bearer_token("Basic abc", "query")
    assert info.value.http_status == 401


# --- webhooks ---------------------------------------------------------------------------------

BODY = json.dumps({"event": "room_started", "room": {"name": "r", "numParticipants": 0},
                   "id": "EV_abc", "createdAt": "1700000000"}).encode()


def test_webhook_signed_by_meshrtc_verifies_with_livekit_api() -> None:
    auth = sign_webhook(KEY, SECRET, BODY)
    assert not auth.startswith("Bearer ")

    event = lk.WebhookReceiver(lk.TokenVerifier(KEY, SECRET)).receive(BODY.decode(), auth)

    assert event.event == "room_started" and event.room.name == "r" and event.created_at == 1700000000
    claims = verify_webhook(KEYS, BODY, auth)
    assert claims.sha256 == base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    assert claims.identity == "" and claims.api_key == KEY
    assert claims.expires_at is not None and 295 <= claims.expires_at - time.time() <= 300


def test_tampered_webhook_body_is_rejected_by_both() -> None:
    auth = sign_webhook(KEY, SECRET, BODY)
    tampered = BODY.replace(b'"r"', b'"s"')
    with pytest.raises(Exception, match="hash mismatch"):
        lk.WebhookReceiver(lk.TokenVerifier(KEY, SECRET)).receive(tampered.decode(), auth)
    with pytest.raises(AuthError, match="sha256 mismatch"):
        verify_webhook(KEYS, tampered, auth)


def test_webhook_signed_by_livekit_api_verifies() -> None:
    digest = base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    auth = lk.AccessToken(KEY, SECRET).with_sha256(digest).to_jwt()
    assert verify_webhook(KEYS, BODY, auth).sha256 == digest
    assert verify_webhook(KEYS, BODY, f"Bearer {auth}").sha256 == digest


def test_webhook_failures() -> None:
    with pytest.raises(AuthError, match="no sha256 claim"):
        verify_webhook(KEYS, BODY, mint_token(KEY, SECRET))
    with pytest.raises(AuthError, match="not valid base64"):
        verify_webhook(KEYS, BODY, mint_token(KEY, SECRET, sha256="%%%"))
    with pytest.raises(AuthError, match="invalid API key"):
        verify_webhook({"someone-else": SECRET}, BODY, sign_webhook(KEY, SECRET, BODY))
    with pytest.raises(AuthError, match="invalid token signature"):
        verify_webhook(KEYS, BODY, sign_webhook(KEY, "wrong-secret", BODY))
