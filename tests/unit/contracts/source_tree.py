"""The repository's Python modules, parsed: what the contract tests walk."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class ParsedModule:
    path: Path  # relative to the repository root
    name: str  # dotted module name, e.g. services.signal.http
    tree: ast.Module


def parsed_modules(*packages: str) -> Iterator[ParsedModule]:
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            parts = list(relative.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ParsedModule(relative, ".".join(parts), ast.parse(path.read_text(), filename=str(relative)))
