"""What a running lab is made of, kept as JSON in its state directory.

`state.json` is written before anything is created (so `down` can undo a crashed `up`) and
updated as processes start. `links.json` holds each link's current delay and loss; the `wire`
emulator rereads it when it changes, and `status` reports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from meshrtc.lab.shaper import Shape
from meshrtc.lab.topology import LabPlan, plan_lab
from shared.errors import ToolError

DEFAULT_STATE_DIR = Path("/run/meshrtc-lab")
Emulator = Literal["netem", "wire", "veth"]  # veth: plain links, no delay or loss (shaping off)


class LabStateError(ToolError, RuntimeError):
    pass


class LinkShape(BaseModel):
    delay_ms: int
    loss_percent: float = 0.0

    def shape(self) -> Shape:
        return Shape(self.delay_ms, self.loss_percent)


class LabState(BaseModel):
    name: str
    slot: int
    datacenters: int
    emulator: Emulator
    initial_delays_ms: dict[str, int]  # "dc1-dc2" → ms, as the lab was planned
    services: bool = True
    wire_pid: int | None = None
    dc_pids: dict[str, int] = {}

    def plan(self) -> LabPlan:
        delays = {tuple(key.split("-", 1)): ms for key, ms in self.initial_delays_ms.items()}
        return plan_lab(self.datacenters, name=self.name, slot=self.slot, delays_ms=delays)  # type: ignore[arg-type]


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def links_file(self) -> Path:
        return self.path / "links.json"

    @property
    def wire_stats_file(self) -> Path:
        return self.path / "wire-stats.json"

    @property
    def wire_ready_file(self) -> Path:
        return self.path / "wire.ready"

    @property
    def wire_applied_file(self) -> Path:
        """The version (mtime_ns) of links.json the wire emulator runs with."""
        return self.path / "wire.applied"

    def links_version(self) -> int:
        return self.links_file.stat().st_mtime_ns

    def save_wire_applied(self, version: int) -> None:
        _write_atomically(self.wire_applied_file, str(version))

    def wire_applied_version(self) -> int:
        try:
            return int(self.wire_applied_file.read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def dc_dir(self, dc: str) -> Path:
        return self.path / dc

    def log_file(self, dc: str) -> Path:
        return self.dc_dir(dc) / "dev.log"

    def relay_keys_file(self, dc: str) -> Path:
        return self.dc_dir(dc) / "relay-keys"

    def exists(self) -> bool:
        return self.state_file.exists()

    def load(self) -> LabState:
        try:
            return LabState.model_validate_json(self.state_file.read_text())
        except FileNotFoundError:
            raise LabStateError(f"no lab here: {self.state_file} does not exist (run `meshrtc lab up`)") from None
        except ValidationError as exc:
            raise LabStateError(f"{self.state_file} is not a lab state file: {exc}") from None

    def save(self, state: LabState) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.state_file, state.model_dump_json(indent=2))

    def load_links(self) -> dict[str, LinkShape]:
        try:
            raw = json.loads(self.links_file.read_text())
            return {name: LinkShape.model_validate(value) for name, value in raw.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, ValidationError) as exc:
            raise LabStateError(f"{self.links_file} is not a link table: {exc}") from None

    def save_links(self, links: dict[str, LinkShape]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.links_file, json.dumps({k: v.model_dump() for k, v in links.items()}, indent=2))

    def save_wire_stats(self, stats: dict[str, dict[str, dict[str, int]]]) -> None:
        _write_atomically(self.wire_stats_file, json.dumps(stats))

    def load_wire_stats(self) -> dict[str, dict[str, dict[str, int]]]:
        """Empty when there is no wire emulator (or it has not written yet)."""
        try:
            return json.loads(self.wire_stats_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def remove(self) -> None:
        """Only what the lab wrote: --state-dir may point at a directory that holds other things."""
        for path in (self.state_file, self.links_file, self.wire_ready_file, self.wire_stats_file,
                     self.wire_applied_file, self.path / "wire.log"):
            path.unlink(missing_ok=True)
        for dc_dir in self.path.glob("dc[0-9]*"):
            shutil.rmtree(dc_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def write_secret(self, path: Path, text: str) -> None:
        """Relay keys: readable by root only, from the first byte on."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(path, 0o600)


def _write_atomically(path: Path, text: str) -> None:
    """Readers (the wire emulator polls links.json) never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
