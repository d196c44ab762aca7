"""parse_connect_params: the /rtc query string as LiveKit clients send it."""

from __future__ import annotations

import base64
import json

import pytest

from services.signal.params import ConnectParams, ParamError, parse_connect_params


def b64url(value: object, *, strip_padding: bool = True) -> str:
    raw = base64.urlsafe_b64encode(json.dumps(value).encode()).decode()
    return raw.rstrip("=") if strip_padding else raw


def test_defaults_for_empty_query() -> None:
    p = parse_connect_params({})
    assert isinstance(p, ConnectParams)
    assert p.auto_subscribe is True
    assert p.adaptive_stream is False
    assert p.subscriber_allow_pause is False
    assert p.reconnect is False
    assert p.participant_sid == ""
    assert p.reconnect_reason == 0
    assert p.attributes == {}
    c = p.client
    assert (c.sdk, c.version, c.protocol, c.client_protocol, c.browser, c.capabilities, c.address) == (
        "", "", 0, 0, "", [], "")


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "True"])
def test_true_flags(raw: str) -> None:
    p = parse_connect_params({"auto_subscribe": raw, "adaptive_stream": raw, "subscriber_allow_pause": raw,
                              "reconnect": raw})
    assert (p.auto_subscribe, p.adaptive_stream, p.subscriber_allow_pause, p.reconnect) == (True, True, True, True)


@pytest.mark.parametrize("raw", ["0", "false", "no", "yes", "2"])
def test_other_values_are_false(raw: str) -> None:
    p = parse_connect_params({"auto_subscribe": raw, "adaptive_stream": raw, "reconnect": raw})
    assert (p.auto_subscribe, p.adaptive_stream, p.reconnect) == (False, False, False)


def test_empty_flag_keeps_default() -> None:
    p = parse_connect_params({"auto_subscribe": "", "adaptive_stream": ""})
    assert (p.auto_subscribe, p.adaptive_stream) == (True, False)


def test_client_details() -> None:
    p = parse_connect_params({
        "sdk": "js", "version": "2.5.0", "protocol": "16", "client_protocol": "1", "os": "macOS",
        "os_version": "14.1", "device_model": "Mac", "browser": "firefox", "browser_version": "120",
        "network": "wifi", "capabilities": "a,b,,c",
    }, user_agent="Mozilla/5.0 Chrome/120.0 Safari/537.36", address="10.0.0.5")
    c = p.client
    assert (c.sdk, c.version, c.protocol, c.client_protocol) == ("js", "2.5.0", 16, 1)
    assert (c.os, c.os_version, c.device_model, c.network) == ("macOS", "14.1", "Mac", "wifi")
    assert (c.browser, c.browser_version) == ("firefox", "120")  # the explicit value wins over the UA
    assert c.capabilities == ["a", "b", "c"]
    assert c.address == "10.0.0.5"


@pytest.mark.parametrize("name", ["protocol", "client_protocol", "reconnect_reason"])
@pytest.mark.parametrize("raw", ["x", "1.5", "16a"])
def test_bad_integers_are_400(name: str, raw: str) -> None:
    with pytest.raises(ParamError) as info:
        parse_connect_params({name: raw})
    assert info.value.status == 400
    assert info.value.message == f"{name} must be an integer"


def test_empty_protocol_is_zero() -> None:
    assert parse_connect_params({"protocol": ""}).client.protocol == 0


def test_reconnect_keeps_sid_and_reason() -> None:
    p = parse_connect_params({"reconnect": "1", "sid": "PA_abc", "reconnect_reason": "3"})
    assert (p.reconnect, p.participant_sid, p.reconnect_reason) == (True, "PA_abc", 3)


def test_sid_ignored_without_reconnect() -> None:
    assert parse_connect_params({"sid": "PA_abc"}).participant_sid == ""
    assert parse_connect_params({"sid": "PA_abc", "reconnect": "0"}).participant_sid == ""


@pytest.mark.parametrize("value", [{"a": "1"}, {"k": "v", "emoji": "\u00e9\u4e2d"}, {"x": "ab"}, {}])
@pytest.mark.parametrize("strip", [True, False])
def test_attributes_base64url_json(value: dict[str, str], strip: bool) -> None:
    assert parse_connect_params({"attributes": b64url(value, strip_padding=strip)}).attributes == value


def test_attributes_with_url_safe_characters() -> None:
    # "??>" encodes to "Pz8-" in base64url (with + and / replaced); make sure those decode.
    value = {"k": "??>??~"}
    encoded = b64url(value)
    assert "-" in encoded or "_" in encoded
    assert parse_connect_params({"attributes": encoded}).attributes == value


@pytest.mark.parametrize("raw", [
    b64url(["a"]),  # not an object
    b64url("text"),
    b64url({"a": 1}),  # non-string value
    b64url({"a": None}),
    b64url({"a": {"b": "c"}}),
])
def test_attributes_wrong_shape_is_400(raw: str) -> None:
    with pytest.raises(ParamError) as info:
        parse_connect_params({"attributes": raw})
    assert info.value.status == 400
    assert info.value.message == "attributes must be a JSON object of strings"


@pytest.mark.parametrize("raw", [
    base64.urlsafe_b64encode(b"not json").decode(),
    base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),  # not UTF-8
    "a",  # impossible length
    "\u00e9\u00e9\u00e9\u00e9",  # not ASCII
])
def test_attributes_undecodable_is_400(raw: str) -> None:
    with pytest.raises(ParamError) as info:
        parse_connect_params({"attributes": raw})
    assert info.value.status == 400
    assert info.value.message == "attributes must be base64url-encoded JSON"


def test_empty_attributes_param_is_no_attributes() -> None:
    assert parse_connect_params({"attributes": ""}).attributes == {}


def test_param_error_is_value_error() -> None:
    err = ParamError(400, "bad")
    assert isinstance(err, ValueError)
    assert (err.status, err.message, str(err)) == (400, "bad", "bad")


@pytest.mark.parametrize(("user_agent", "browser"), [
    ("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", "firefox"),
    ("Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 "
     "Edg/120.0.2210.91", "edge"),
    ("Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
     "chrome"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 "
     "Safari/605.1.15", "safari"),
    ("python-httpx/0.27", ""),
    ("", ""),
])
def test_browser_from_user_agent(user_agent: str, browser: str) -> None:
    assert parse_connect_params({}, user_agent=user_agent).client.browser == browser


def test_empty_browser_param_falls_back_to_user_agent() -> None:
    p = parse_connect_params({"browser": ""}, user_agent="Mozilla/5.0 Firefox/121.0")
    assert p.client.browser == "firefox"
