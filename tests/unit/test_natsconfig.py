from __future__ import annotations

import subprocess

import pytest

from shared.natsconfig import dc_nats_config
from shared.natsserver import nats_server_binary


def test_hub_accepts_leafnodes_and_has_its_own_domain(tmp_path) -> None:
    text = dc_nats_config("dc1", host="127.0.0.1", port=4222, store_dir=str(tmp_path), http_port=8222,
                          leaf_port=7422)
    assert "domain: dc1" in text
    assert 'listen: "127.0.0.1:7422"' in text
    assert "remotes" not in text
    assert 'http: "127.0.0.1:8222"' in text
    assert "system_account: SYS" in text


def test_spoke_solicits_the_hub_with_the_app_account(tmp_path) -> None:
    text = dc_nats_config("dc2", host="127.0.0.2", port=4222, store_dir=str(tmp_path),
                          hub_leaf_url="nats-leaf://127.0.0.1:7422", ping_interval="1s", ping_max=3)
    assert "domain: dc2" in text
    assert 'urls: ["nats-leaf://app:app@127.0.0.1:7422"], account: APP' in text
    assert 'ping_interval: "1s"' in text and "ping_max: 3" in text
    assert "http:" not in text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"leaf_port": 7422, "hub_leaf_url": "nats-leaf://h:1"},
        {"hub_leaf_url": "http://h:1"},
        {"hub_leaf_url": "nats-leaf://h"},
        {"ping_interval": "2"},
        {"ping_max": 0},
    ],
)
def test_bad_input_is_refused(tmp_path, kwargs) -> None:
    with pytest.raises(ValueError):
        dc_nats_config("dc1", host="127.0.0.1", port=4222, store_dir=str(tmp_path), **kwargs)


def test_bad_dc_name_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="datacenter name"):
        dc_nats_config("DC 1", host="127.0.0.1", port=4222, store_dir=str(tmp_path))


@pytest.mark.parametrize("role", ["hub", "spoke", "standalone"])
def test_nats_server_accepts_the_config(tmp_path, role: str) -> None:
    text = dc_nats_config(
        "dc1", host="127.0.0.1", port=4222, store_dir=str(tmp_path / "js"), http_port=8222,
        leaf_port=7422 if role == "hub" else None,
        hub_leaf_url="nats-leaf://127.0.0.1:7422" if role == "spoke" else None,
    )
    conf = tmp_path / "nats.conf"
    conf.write_text(text)
    check = subprocess.run([nats_server_binary(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=20)
    assert check.returncode == 0, check.stderr + check.stdout
