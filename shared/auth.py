"""LiveKit-compatible access tokens and webhook signatures (HS256 JWTs).

Tokens must interoperate both ways with LiveKit's SDKs and server: whatever `livekit-api` mints
must verify here with every grant intact, and whatever we mint must verify there. What that takes:

* `/rtc` takes the token from `Authorization: Bearer …` (the Rust SDK) or from the
  `access_token` query parameter (the JS SDK); both must work.
* Only HS256; `iss` is the API key, which selects the secret; `sub` is the identity; `exp` is
  required; `nbf` and `exp` are checked with 60 s of leeway.
* Custom claims are lowerCamelCase (`video.roomJoin`, `canPublishSources`, ...). An absent
  `canPublish`/`canSubscribe` means true and an absent `canPublishData` follows `canPublish`,
  as LiveKit's server reads them.
* A webhook's `Authorization` header is the bare token (no `Bearer `), whose `sha256` claim is
  the standard base64 (with padding) of the SHA-256 digest of the exact body bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from typing import Any

import jwt

from shared.errors import AccessError

try:
    from jwt.warnings import InsecureKeyLengthWarning

    # LiveKit's well-known dev secret ("secret") is far below RFC 7518's 32 bytes. Whether short
    # secrets are acceptable is a deployment policy decided by configuration, not something to
    # nag about on every signature.
    warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)
except ImportError:  # pyjwt < 2.10 has no such warning
    pass

ALGORITHM = "HS256"
DEFAULT_TTL = timedelta(hours=6)
DEFAULT_LEEWAY = 60  # seconds, as LiveKit's Go and Python verifiers
WEBHOOK_TTL = timedelta(minutes=5)

TRACK_SOURCES = ("camera", "microphone", "screen_share", "screen_share_audio")

# Claims we model explicitly; anything else (sip, agent, kindDetails, ...) is carried in `extra`
# so that re-minting a verified token loses nothing.
_REGISTERED = {"iss", "sub", "jti", "nbf", "exp", "iat", "aud"}
_MODELLED = {"name", "kind", "metadata", "attributes", "video", "sha256", "roomConfig", "roomPreset"}


class AuthError(AccessError):
    """Authentication failure; `http_status` is what the HTTP layer should answer."""

    def __init__(self, message: str, http_status: int = 401) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status


def _malformed(detail: str) -> AuthError:
    return AuthError(f"invalid authorization token: {detail}")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


@dataclass
class VideoGrant:
    """The `video` claim. `None` means "absent from the token", which matters for the three
    publish/subscribe permissions whose defaults are not False (use the `*_effective` accessors)."""

    room_create: bool | None = None
    room_list: bool | None = None
    room_record: bool | None = None
    room_admin: bool | None = None
    room_join: bool | None = None
    room: str = ""
    can_publish: bool | None = None
    can_subscribe: bool | None = None
    can_publish_data: bool | None = None
    can_publish_sources: list[str] | None = None
    can_update_own_metadata: bool | None = None
    ingress_admin: bool | None = None
    hidden: bool | None = None
    recorder: bool | None = None
    agent: bool | None = None
    can_subscribe_metrics: bool | None = None
    can_manage_agent_session: bool | None = None
    destination_room: str = ""

    def can_publish_effective(self) -> bool:
        return self.can_publish is not False

    def can_subscribe_effective(self) -> bool:
        return self.can_subscribe is not False

    def can_publish_data_effective(self) -> bool:
        # The Go server lets data publishing follow canPublish when the token does not say.
        if self.can_publish_data is None:
            return self.can_publish_effective()
        return self.can_publish_data

    def can_publish_source(self, source: str) -> bool:
        """Whether a track from `source` (e.g. "camera") may be published; an empty or absent
        source list places no restriction beyond canPublish."""
        if not self.can_publish_effective():
            return False
        if not self.can_publish_sources:
            return True
        return source.lower() in (s.lower() for s in self.can_publish_sources)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: lowerCamelCase, absent values and empty strings dropped, False kept."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == "":
                continue
            out[_camel(f.name)] = list(value) if isinstance(value, list) else value
        return out

    @classmethod
    def from_dict(cls, data: Any) -> VideoGrant:
        if not isinstance(data, dict):
            raise _malformed("'video' claim must be an object")
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = _camel(f.name)
            value = data.get(name)
            if value is None:
                continue  # unknown keys are ignored: newer servers add grants we don't know yet
            if f.name in ("room", "destination_room"):
                ok = isinstance(value, str)
            elif f.name == "can_publish_sources":
                ok = isinstance(value, list) and all(isinstance(s, str) for s in value)
            else:
                ok = isinstance(value, bool)
            if not ok:
                raise _malformed(f"video grant {name!r} has the wrong type")
            values[f.name] = list(value) if isinstance(value, list) else value
        return cls(**values)


@dataclass
class Claims:
    """Everything a LiveKit access token says. `api_key`, `expires_at` and `not_before` (unix
    seconds) mirror the registered claims iss/exp/nbf of a verified token."""

    identity: str = ""
    name: str = ""
    kind: str = ""
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    video: VideoGrant = field(default_factory=VideoGrant)
    sha256: str = ""
    room_config: dict[str, Any] | None = None  # RoomConfiguration in proto3 JSON, kept raw
    room_preset: str = ""
    api_key: str = ""
    expires_at: int | None = None
    not_before: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_jwt_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {k: v for k, v in self.extra.items() if k not in _MODELLED}
        optional: dict[str, Any] = {
            "iss": self.api_key,
            "sub": self.identity,
            "nbf": self.not_before,
            "exp": self.expires_at,
            "name": self.name,
            "kind": self.kind,
            "metadata": self.metadata,
            "attributes": dict(self.attributes),
            "video": self.video.to_dict(),
            "sha256": self.sha256,
            "roomConfig": self.room_config,
            "roomPreset": self.room_preset,
        }
        # Same minimisation as livekit-api: tokens travel in URLs, so omit what says nothing.
        payload.update({k: v for k, v in optional.items() if v is not None and v != "" and v != {}})
        return payload

    @classmethod
    def from_jwt_payload(cls, payload: dict[str, Any]) -> Claims:
        def text(key: str) -> str:
            value = payload.get(key)
            if value is None:
                return ""
            if not isinstance(value, str):
                raise _malformed(f"claim {key!r} must be a string")
            return value

        def seconds(key: str) -> int | None:
            value = payload.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _malformed(f"claim {key!r} must be a number")
            return int(value)

        attributes = payload.get("attributes") or {}
        if not isinstance(attributes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
        ):
            raise _malformed("'attributes' claim must map strings to strings")
        room_config = payload.get("roomConfig")
        if room_config is not None and not isinstance(room_config, dict):
            raise _malformed("'roomConfig' claim must be an object")
        video = payload.get("video")
        return cls(
            # Go's verifier falls back to jti for tokens minted by very old SDKs.
            identity=text("sub") or text("jti"),
            name=text("name"),
            kind=text("kind"),
            metadata=text("metadata"),
            attributes=dict(attributes),
            video=VideoGrant() if video is None else VideoGrant.from_dict(video),
            sha256=text("sha256"),
            room_config=room_config,
            room_preset=text("roomPreset"),
            api_key=text("iss"),
            expires_at=seconds("exp"),
            not_before=seconds("nbf"),
            extra={k: v for k, v in payload.items() if k not in _REGISTERED | _MODELLED},
        )


def mint_token(
    api_key: str,
    api_secret: str,
    claims: Claims | None = None,
    *,
    ttl: timedelta = DEFAULT_TTL,
    **changes: Any,
) -> str:
    """Sign `claims` (or a Claims built from keyword fields, which also override `claims`).
    iss, nbf and exp always come from `api_key`, the clock and `ttl`."""
    if not api_key or not api_secret:
        raise ValueError("api_key and api_secret must be non-empty")
    base = claims if claims is not None else Claims()
    now = int(time.time())
    final = replace(base, **changes, api_key=api_key, not_before=now,
                    expires_at=now + int(ttl.total_seconds()))
    return jwt.encode(final.to_jwt_payload(), api_secret, algorithm=ALGORITHM)


class TokenVerifier:
    """Verifies tokens against a set of API keys, as LiveKit's server does: the issuer names
    the key, exp is mandatory, and only HS256 is acceptable."""

    def __init__(self, api_keys: dict[str, str], leeway: int = DEFAULT_LEEWAY) -> None:
        self.api_keys = dict(api_keys)
        self.leeway = leeway

    def verify(self, token: str) -> Claims:
        if not token:
            raise _malformed("empty token")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as exc:
            raise _malformed(str(exc)) from None
        # Checked before any key lookup so "alg": "none" or RS/HS confusion never reaches pyjwt.
        if header.get("alg") != ALGORITHM:
            raise _malformed(f"unsupported signing algorithm {header.get('alg')!r}, expected HS256")
        api_key = unverified.get("iss")
        secret = self.api_keys.get(api_key) if isinstance(api_key, str) else None
        if not secret:
            raise AuthError("invalid API key")
        try:
            payload = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                leeway=self.leeway,
                # LiveKit has no audience; a stray aud must not fail tokens Go would accept.
                options={"require": ["exp"], "verify_aud": False},
            )
        except jwt.InvalidSignatureError:
            raise AuthError("invalid token signature") from None
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not valid yet") from None
        except jwt.MissingRequiredClaimError as exc:
            if exc.claim == "exp":
                # A signed token without exp would otherwise be valid forever.
                raise AuthError("token has no expiry (exp claim required)") from None
            raise _malformed(str(exc)) from None
        except jwt.InvalidTokenError as exc:
            raise _malformed(str(exc)) from None
        return Claims.from_jwt_payload(payload)


def bearer_token(authorization_header: str | None, query_token: str | None) -> str | None:
    """The token of an /rtc or Twirp request: the header wins (Rust SDK, server SDKs), the
    `access_token` query value is the fallback (JS SDK). None when neither carries one."""
    if authorization_header:
        if not authorization_header.startswith("Bearer "):
            raise AuthError("invalid authorization header. Must start with Bearer ")
        return authorization_header[len("Bearer "):].strip() or None
    return query_token or None


def _body_digest(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def sign_webhook(api_key: str, api_secret: str, body: bytes) -> str:
    """The Authorization header value for a webhook POST: a bare JWT (receivers pass the header
    straight to their verifier, so a "Bearer " prefix would break them)."""
    return mint_token(api_key, api_secret, Claims(sha256=_body_digest(body)), ttl=WEBHOOK_TTL)


def verify_webhook(api_keys: dict[str, str], body: bytes, auth_header: str) -> Claims:
    # Tolerate a Bearer prefix on receipt; senders never add one.
    token = auth_header[len("Bearer "):] if auth_header.startswith("Bearer ") else auth_header
    claims = TokenVerifier(api_keys).verify(token.strip())
    if not claims.sha256:
        raise AuthError("webhook token has no sha256 claim")
    try:
        expected = base64.b64decode(claims.sha256, validate=True)
    except (binascii.Error, ValueError):
        raise AuthError("webhook sha256 claim is not valid base64") from None
    if not hmac.compare_digest(expected, hashlib.sha256(body).digest()):
        raise AuthError("webhook body does not match its signature (sha256 mismatch)")
    return claims
