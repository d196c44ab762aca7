"""`degrade` on a wire-emulated lab returns only once the emulator runs with the new shape."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from meshrtc.lab import links
from meshrtc.lab.netns import LabNetworkError
from meshrtc.lab.state import LinkShape, StateDir


def test_waits_for_the_emulator_to_apply_the_table(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path)
    state_dir.save_links({"dc1-dc2": LinkShape(delay_ms=50)})
    version = state_dir.links_version()

    def emulator() -> None:
        time.sleep(0.2)
        state_dir.save_wire_applied(version)

    thread = threading.Thread(target=emulator)
    started = time.monotonic()
    thread.start()
    links.wait_until_applied(state_dir, timeout=2)
    thread.join()
    assert time.monotonic() - started >= 0.2


def test_an_emulator_that_never_applies_is_an_error(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path)
    state_dir.save_links({"dc1-dc2": LinkShape(delay_ms=50)})
    state_dir.save_wire_applied(state_dir.links_version() - 1)  # an older table
    with pytest.raises(LabNetworkError, match="did not apply"):
        links.wait_until_applied(state_dir, timeout=0.2)
