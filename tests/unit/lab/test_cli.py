from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from meshrtc.cli import main


def test_lab_refuses_to_run_without_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert main(["lab", "--state-dir", str(tmp_path), "up", "--datacenters", "3"]) == 1
    assert "needs root" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing was made


def test_dry_run_prints_the_network_commands_without_root(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert main(["lab", "up", "--dry-run", "--datacenters", "2", "--delay", "dc1-dc2=45ms"]) == 0
    out = capsys.readouterr().out
    assert "ip netns add meshrtc-dc1" in out
    assert "tc -n meshrtc-dc1 qdisc replace dev to-dc2 root netem delay 45ms" in out


def test_bad_input_gets_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "up", "--dry-run", "--datacenters", "3", "--delay", "dc1-dc9=5ms"]) == 1
    assert "unknown datacenter 'dc9'" in capsys.readouterr().err


def test_commands_on_a_missing_lab_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("the lab's commands check for root and `ip` first")
    assert main(["lab", "--state-dir", str(tmp_path / "none"), "cut", "dc1", "dc2"]) == 1
    assert "no lab here" in capsys.readouterr().err
