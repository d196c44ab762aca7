"""docs/flows.md names real functions and real tests, and every step names a test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOWS = ROOT / "docs" / "flows.md"
FUNCTION_REF = re.compile(r"`((?:services|shared|meshrtc)/[\w/]+\.py):([\w.]+)`")
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
STEP = re.compile(r"^\s*\d+\. ", re.M)


def defined_names(path: Path) -> set[str]:
    """Module-level functions and classes, and `Class.method` for methods."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(f"{node.name}.{item.name}")
    return names


def steps(text: str) -> list[str]:
    starts = [m.start() for m in STEP.finditer(text)]
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


@pytest.mark.parametrize(("pattern", "separator", "at_least"), [(FUNCTION_REF, ":", 40), (TEST_REF, "::", 25)],
                         ids=["functions", "tests"])
def test_every_function_and_test_named_exists(pattern: re.Pattern[str], separator: str, at_least: int) -> None:
    refs = pattern.findall(FLOWS.read_text())
    assert len(refs) > at_least
    missing = [f"{path}{separator}{name}" for path, name in refs
               if not (ROOT / path).is_file() or name not in defined_names(ROOT / path)]
    assert not missing, f"docs/flows.md names what does not exist: {missing}"


def test_every_step_names_a_function_and_a_test() -> None:
    text = FLOWS.read_text()
    numbered = steps(text)
    assert len(numbered) >= 25
    bare = [step.splitlines()[0][:60] for step in numbered
            if not FUNCTION_REF.search(step) or not TEST_REF.search(step)]
    assert not bare, f"steps without a function or a test: {bare}"
