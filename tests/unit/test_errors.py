"""Every exception meshrtc defines belongs to the one tree under `MeshrtcError` (docs/errors.md)."""

from __future__ import annotations

import errno
import functools
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared import errors
from shared.bus import BusTimeout, BusUnavailable, OutboxFull
from shared.config import ConfigError
from shared.errors import BusError, ContractError, MediaError, MeshrtcError
from shared.events import EventDecodeError

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ["shared", "services", "meshrtc"]
LAYERS = [cls for cls in vars(errors).values() if inspect.isclass(cls) and cls.__bases__ == (MeshrtcError,)]

# Run in a child process: importing every module installs the media node's aiortc hooks, which
# must not leak into the other tests of this process.
_WALK = """
import importlib, inspect, json, pkgutil, sys
from shared.errors import MeshrtcError
found = {}
for name in sys.argv[1:]:
    package = importlib.import_module(name)
    modules = [package]
    for info in pkgutil.walk_packages(package.__path__, name + "."):
        if info.name.rsplit(".", 1)[-1] != "__main__":  # __main__ runs the command line when imported
            modules.append(importlib.import_module(info.name))
    for module in modules:
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[module.__name__ + "." + obj.__qualname__] = [f"{c.__module__}.{c.__qualname__}"
                                                                   for c in obj.__mro__]
print(json.dumps(found))
"""


@functools.cache
def _exception_classes() -> dict[str, list[str]]:
    """Every exception class defined under PACKAGES: dotted name -> its MRO as dotted names."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _WALK, *PACKAGES], cwd=REPO, env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return dict(json.loads(out))


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_the_walk_finds_the_exception_classes() -> None:
    found = set(_exception_classes())
    assert {"shared.events.EventDecodeError", "services.media.commands.CommandError",
            "services.media.webrtc.peer.MediaPeerTimeoutError", "meshrtc.commands.room.CliError"} <= found
    assert len(found) > 30


def test_every_exception_class_derives_from_meshrtc_error() -> None:
    outside = [name for name, mro in _exception_classes().items() if _dotted(MeshrtcError) not in mro]
    assert outside == []


def test_every_exception_class_belongs_to_exactly_one_layer() -> None:
    layers = {_dotted(layer) for layer in LAYERS}
    for name, mro in _exception_classes().items():
        if name == _dotted(MeshrtcError) or name in layers:
            continue
        assert len(layers & set(mro)) == 1, f"{name}: layers {sorted(layers & set(mro))}"


def test_the_tree_is_documented() -> None:
    text = (REPO / "docs" / "errors.md").read_text(encoding="utf-8")
    for name in _exception_classes():
        assert f"`{name.rsplit('.', 1)[-1]}`" in text, f"{name} missing from docs/errors.md"


@pytest.mark.parametrize(("error", "builtin", "layer"), [
    (EventDecodeError("x"), ValueError, ContractError),
    (ConfigError("MESHRTC_X", "bad"), ValueError, errors.ConfigurationError),
    (BusUnavailable("x"), RuntimeError, BusError),
    (OutboxFull("x"), RuntimeError, BusError),
    (BusTimeout("x"), TimeoutError, BusError),
])
def test_builtin_bases_are_kept_so_old_except_clauses_still_catch(error: Exception, builtin: type[Exception],
                                                                   layer: type[MeshrtcError]) -> None:
    with pytest.raises(builtin):
        raise error
    assert isinstance(error, layer)


def test_an_os_error_keeps_its_errno() -> None:
    from services.media.webrtc.ice import PortRangeExhaustedError

    error = PortRangeExhaustedError("127.0.0.1", 50000, 50001)
    assert isinstance(error, OSError) and isinstance(error, MediaError)
    assert error.errno == errno.EADDRINUSE and "50000-50001" in str(error)
