"""`meshrtc serve` with bad configuration exits at once with one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shared.natsserver import NatsServer


def serve(service: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MESHRTC_")}
    return subprocess.run([sys.executable, "-m", "meshrtc", "serve", service], env={**clean, **env},
                          capture_output=True, text=True, timeout=timeout)


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("meshrtc")]
    assert lines, result.stderr
    return lines[-1]


@pytest.mark.timeout(60)
def test_unreachable_nats_names_the_variable() -> None:
    result = serve("relay", {"MESHRTC_NATS_URL": "nats://127.0.0.1:1", "MESHRTC_NATS_CONNECT_TIMEOUT": "2"})
    assert result.returncode == 2
    assert "MESHRTC_NATS_URL" in last_line(result)


def test_missing_secret_names_the_variable() -> None:
    result = serve("signal", {"MESHRTC_API_KEY": "k"})
    assert result.returncode == 2
    assert "MESHRTC_API_SECRET" in last_line(result)


def test_missing_api_keys_for_signal() -> None:
    result = serve("signal", {})
    assert result.returncode == 2
    assert "MESHRTC_API_KEYS" in last_line(result)


@pytest.mark.timeout(60)
def test_database_that_does_not_connect_names_the_variable(nats_server: NatsServer) -> None:
    result = serve("room", {"MESHRTC_NATS_URL": nats_server.url,
                            "MESHRTC_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert result.returncode == 2
    assert "MESHRTC_DATABASE_URL" in last_line(result)
