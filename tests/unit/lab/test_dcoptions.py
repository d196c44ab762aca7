from __future__ import annotations

from pathlib import Path

import pytest

from meshrtc.cli import build_parser
from meshrtc.commands.dev import dc_options
from meshrtc.dcoptions import DcOptions, parse_relay_keys
from shared.config import ConfigError

KEY = "ab" * 32


def _options(*argv: str) -> DcOptions:
    return dc_options(build_parser().parse_args(["dev", *argv]))


def test_no_multi_dc_flag_keeps_the_standalone_dev() -> None:
    assert not _options().multi_dc
    assert not _options("--dc", "dc2", "--port", "7881").multi_dc


def test_a_spoke_gets_its_nats_config_and_its_services_the_relay_settings(tmp_path: Path) -> None:
    options = _options("--dc", "dc2", "--datacenters", "dc1,dc2,dc3", "--nats-host", "0.0.0.0", "--nats-port", "4222",
                       "--nats-http-port", "8222", "--nats-hub", "nats-leaf://198.19.0.1:7422",
                       "--relay-port", "7900", "--relay-peer", "dc1@198.19.0.1:7900",
                       "--relay-peer", "dc3@198.19.0.10:7900", "--relay-key", f"dc1-dc2:{KEY}")
    assert options.multi_dc
    config = options.nats_config(tmp_path / "js")
    assert "domain: dc2" in config
    assert "198.19.0.1:7422" in config
    assert 'http: "0.0.0.0:8222"' in config
    assert options.client_nats_url() == "nats://127.0.0.1:4222"  # services reach a wildcard listener on loopback
    assert options.service_env() == {
        "MESHRTC_INTERNAL_IP": "127.0.0.1",
        "MESHRTC_RELAY_PORT": "7900",
        "MESHRTC_RELAY_PEERS": "dc1@198.19.0.1:7900,dc3@198.19.0.10:7900",
        "MESHRTC_RELAY_KEYS": f"dc1-dc2:{KEY}",
    }


def test_the_hub_accepts_leafnodes(tmp_path: Path) -> None:
    options = _options("--dc", "dc1", "--datacenters", "dc1,dc2", "--nats-port", "4222", "--nats-leaf-port", "7422")
    assert 'listen: "127.0.0.1:7422"' in options.nats_config(tmp_path)


def test_relay_keys_come_from_a_file_and_flags(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"dc1-dc2:{KEY}\ndc1-dc3:{'cd' * 32}\n")
    keys = parse_relay_keys([f"dc1-dc3:{'ef' * 32}"], keys_file)
    assert keys == {"dc1-dc2": KEY, "dc1-dc3": "ef" * 32}  # a flag overrides the file
    with pytest.raises(ConfigError, match="--relay-keys-file: cannot read"):
        parse_relay_keys([], tmp_path / "missing")


@pytest.mark.parametrize("argv, flag", [
    (["--dc", "dc4", "--datacenters", "dc1,dc2"], "--datacenters"),
    (["--datacenters", "dc1,dc1"], "--datacenters"),
    (["--datacenters", "dc1,DC2"], "--datacenters"),
    (["--nats-leaf-port", "7422", "--nats-hub", "nats-leaf://1.2.3.4:7422"], "--nats-hub"),
    (["--nats-hub", "http://hub:7422"], "--nats-hub"),
    (["--relay-port", "7900", "--relay-peer", "dc2-198.19.0.2"], "--relay-peer"),
    (["--relay-port", "7900", "--relay-peer", "dc1@198.19.0.2:7900"], "--relay-peer"),
    (["--datacenters", "dc1,dc2", "--relay-port", "7900", "--relay-peer", "dc9@198.19.0.2:7900"], "--relay-peer"),
    (["--relay-peer", "dc2@198.19.0.2:7900"], "--relay-port"),
    (["--relay-key", "dc1-dc2:abcd"], "--relay-key"),
    (["--relay-key", f"dc1:{KEY}"], "--relay-key"),
])
def test_bad_multi_dc_flags_name_the_flag(argv: list[str], flag: str) -> None:
    with pytest.raises(ConfigError) as info:
        _options(*argv)
    assert info.value.variable == flag
