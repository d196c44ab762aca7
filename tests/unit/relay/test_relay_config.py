from __future__ import annotations

import pytest

from shared.config import ConfigError, load_settings, relay_link_name, settings_to_env

KEY = "ab" * 32


def test_relay_settings_parse_and_round_trip() -> None:
    settings = load_settings({
        "MESHRTC_DC": "dc1", "MESHRTC_RELAY_PORT": "7100", "MESHRTC_RELAY_LOCAL_PORT": "0",
        "MESHRTC_RELAY_PEERS": "dc2@10.0.0.2:7100, dc3@relay.dc3.example:7100",
        "MESHRTC_RELAY_KEYS": f"dc2-dc1:{KEY},dc1-dc3:{KEY.upper()}", "MESHRTC_INTERNAL_IP": "10.1.0.5",
    })
    assert settings.relay_port == 7100 and settings.relay_local_port == 0
    assert settings.relay_peers == {"dc2": "10.0.0.2:7100", "dc3": "relay.dc3.example:7100"}
    assert settings.relay_keys == {"dc1-dc2": KEY, "dc1-dc3": KEY}  # unordered pair, one spelling
    assert settings.internal_ip == "10.1.0.5"
    again = load_settings(settings_to_env(settings))
    assert (again.relay_peers, again.relay_keys, again.internal_ip) == (
        settings.relay_peers, settings.relay_keys, settings.internal_ip)


def test_dc_names_with_dashes_are_split_by_the_known_dcs() -> None:
    settings = load_settings({"MESHRTC_DC": "eu-west", "MESHRTC_RELAY_PEERS": "us-east@10.0.0.2:1",
                              "MESHRTC_RELAY_KEYS": f"us-east-eu-west:{KEY}"})
    assert settings.relay_keys == {relay_link_name("eu-west", "us-east"): KEY}


def test_keys_of_links_between_other_dcs_are_accepted() -> None:
    """One keys file for every DC of a deployment: dc1 also sees the dc2-dc3 key."""
    settings = load_settings({"MESHRTC_DC": "dc1", "MESHRTC_RELAY_KEYS": f"dc1-dc2:{KEY},dc2-dc3:{KEY}"})
    assert set(settings.relay_keys) == {"dc1-dc2", "dc2-dc3"}


def test_dashed_dc_names_of_other_links_are_split_by_the_datacenter_list() -> None:
    settings = load_settings({"MESHRTC_DC": "eu-west", "MESHRTC_DATACENTERS": "eu-west,us-east,ap-south",
                              "MESHRTC_RELAY_KEYS": f"us-east-ap-south:{KEY}"})
    assert settings.relay_keys == {relay_link_name("ap-south", "us-east"): KEY}


def test_internal_ip_defaults_to_an_address() -> None:
    assert load_settings({}).internal_ip


@pytest.mark.parametrize(("env", "variable", "fragment"), [
    ({"MESHRTC_RELAY_PEERS": "dc2"}, "MESHRTC_RELAY_PEERS", "dc@host:port"),
    ({"MESHRTC_RELAY_PEERS": "dc2@h:99999"}, "MESHRTC_RELAY_PEERS", "dc@host:port"),
    ({"MESHRTC_RELAY_PEERS": "DC2@h:1"}, "MESHRTC_RELAY_PEERS", "must match"),
    ({"MESHRTC_RELAY_PEERS": "dc1@h:1"}, "MESHRTC_RELAY_PEERS", "itself"),
    ({"MESHRTC_RELAY_PEERS": "dc2@h:1,dc2@h:2"}, "MESHRTC_RELAY_PEERS", "twice"),
    ({"MESHRTC_RELAY_PEERS": "dc2@h:1", "MESHRTC_RELAY_KEYS": "dc1-dc2:abc"}, "MESHRTC_RELAY_KEYS", "64 hex"),
    ({"MESHRTC_RELAY_PEERS": "dc2@h:1", "MESHRTC_RELAY_KEYS": f"relay1:{KEY}"}, "MESHRTC_RELAY_KEYS", "two data"),
    ({"MESHRTC_RELAY_KEYS": f"a-b-c:{KEY}"}, "MESHRTC_RELAY_KEYS", "two datacenters"),  # ambiguous, unknown DCs
    ({"MESHRTC_RELAY_PEERS": "dc2@h:1", "MESHRTC_RELAY_KEYS": f"dc1-dc2:{KEY},dc2-dc1:{KEY}"},
     "MESHRTC_RELAY_KEYS", "two keys"),
    ({"MESHRTC_RELAY_PORT": "70000"}, "MESHRTC_RELAY_PORT", "0-65535"),
])
def test_bad_relay_settings_name_the_variable(env: dict[str, str], variable: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.variable == variable
    assert fragment in str(info.value)
