"""Services talk through `shared/` contracts, never through each other's modules: a module of
`services/X` importing anything of `services/Y` (X != Y) fails here. Imports inside functions
and under TYPE_CHECKING count too; `meshrtc/` (the CLI) and tests may import any service."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .source_tree import ParsedModule, parsed_modules


def imported_modules(module: ParsedModule) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import anywhere in the module, relative ones resolved."""
    package = module.name.split(".") if module.path.name == "__init__.py" else module.name.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from services import room` imports services.room
            found.extend((node.lineno, f"{target}.{alias.name}") if target == "services" else (node.lineno, target)
                         for alias in node.names)
    return found


def service_of(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "services" else None


def crossings(module: ParsedModule) -> list[str]:
    own = service_of(module.name)
    return [f"{module.path}:{line}: imports {target}" for line, target in imported_modules(module)
            if (other := service_of(target)) is not None and other != own]


def test_no_service_imports_another_service() -> None:
    offenders = [hit for module in parsed_modules("services") for hit in crossings(module)]
    assert offenders == [], "move what they share into shared/contracts/:\n" + "\n".join(offenders)


def test_shared_imports_no_service() -> None:
    offenders = [f"{module.path}:{line}: imports {target}" for module in parsed_modules("shared")
                 for line, target in imported_modules(module) if service_of(target) is not None]
    assert offenders == []


def test_every_service_is_walked() -> None:
    services = {service_of(m.name) for m in parsed_modules("services")}
    assert {"signal", "media", "relay", "room", "billing"} <= services


@pytest.mark.parametrize(("name", "source", "caught"), [
    ("services.signal.http", "from services.billing.protocol import QueryError", True),
    ("services.signal.twirp", "def f():\n    from services.room import api", True),
    ("services.signal.twirp", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import services.room.api",
     True),
    ("services.signal.http", "from ..billing import store", True),
    ("services.signal.http", "from .admission import authenticate", False),
    ("services.media.webrtc.peer", "from ..rtp import header", False),
    ("services.media.node", "from shared.contracts.control import MediaCommand", False),
    ("services.media.node", "import services.media.room", False),
])
def test_the_detector(name: str, source: str, caught: bool) -> None:
    path = Path(*name.split(".")).with_suffix(".py")
    module = ParsedModule(path, name, ast.parse(source))
    assert bool(crossings(module)) is caught
