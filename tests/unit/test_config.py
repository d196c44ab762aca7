from __future__ import annotations

import pytest

from shared.config import ConfigError, load_settings, parse_api_keys, settings_to_env


def test_defaults_and_round_trip_through_env() -> None:
    settings = load_settings({"MESHRTC_API_KEYS": "k1:s1,k2:s2", "MESHRTC_RTC_PORT_RANGE": "50000-50100"})
    assert settings.api_keys == {"k1": "s1", "k2": "s2"}
    assert (settings.rtc_port_min, settings.rtc_port_max) == (50000, 50100)
    again = load_settings(settings_to_env(settings))
    assert again.api_keys == settings.api_keys and again.nats_url == settings.nats_url


@pytest.mark.parametrize(("env", "variable"), [
    ({"MESHRTC_API_KEYS": "nosecret"}, "MESHRTC_API_KEYS"),
    ({"MESHRTC_API_KEY": "k"}, "MESHRTC_API_SECRET"),
    ({"MESHRTC_API_SECRET": "s"}, "MESHRTC_API_KEY"),
    ({"MESHRTC_HTTP_PORT": "eighty"}, "MESHRTC_HTTP_PORT"),
    ({"MESHRTC_RTC_PORT_RANGE": "9-1"}, "MESHRTC_RTC_PORT_RANGE"),
    ({"MESHRTC_DC": "DC ONE"}, "MESHRTC_DC"),
    ({"MESHRTC_NATS_URL": "localhost:4222"}, "MESHRTC_NATS_URL"),
    ({"MESHRTC_DC": "dc1", "MESHRTC_DATACENTERS": "dc2,dc3"}, "MESHRTC_DATACENTERS"),
    ({"MESHRTC_DATACENTERS": "dc1,DC 2"}, "MESHRTC_DATACENTERS"),
    ({"MESHRTC_DATACENTERS": "dc1,dc1"}, "MESHRTC_DATACENTERS"),
])
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.variable == variable
    assert str(info.value).startswith(variable)


def test_keys_file_style() -> None:
    assert parse_api_keys("a: b\nc: d\n") == {"a": "b", "c": "d"}


def test_missing_api_keys_is_reported() -> None:
    with pytest.raises(ConfigError, match="MESHRTC_API_KEYS"):
        load_settings({}).require_api_keys()


def test_datacenters_default_to_the_own_dc_and_round_trip() -> None:
    assert load_settings({"MESHRTC_DC": "eu"}).datacenters == ["eu"]
    settings = load_settings({"MESHRTC_DC": "dc2", "MESHRTC_DATACENTERS": "dc1, dc2,dc3"})
    assert settings.datacenters == ["dc1", "dc2", "dc3"]
    assert load_settings(settings_to_env(settings)).datacenters == ["dc1", "dc2", "dc3"]
