"""Every NATS subject is built in shared/contracts/subjects.py: no other module of the services,
the shared code or the CLI may spell one out as a string or f-string literal."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared.events import known_event_types

from .source_tree import ParsedModule, parsed_modules

# The first token of every subject we publish or subscribe to (and JetStream's API, which we
# address directly). A literal starting with one of these and a '.' is a subject built by hand.
SUBJECT_ROOTS = ("sess", "ctl", "events", "usage", "billing", "telemetry", "heartbeat", "data", "$JS")
SUBJECTS_MODULE = Path("shared/contracts/subjects.py")
# Event type names ('usage.sample', 'telemetry.track') share a first token with their stream's
# subjects; they are names, not subjects.
EVENT_TYPES = frozenset(known_event_types())


def looks_like_subject(text: str) -> bool:
    return text not in EVENT_TYPES and any(text.startswith(root + ".") for root in SUBJECT_ROOTS)


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (prose may name a subject)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def subject_literals(module: ParsedModule) -> list[str]:
    """`path:line: text` of each literal in the module that looks like one of our subjects."""
    docstrings = _docstrings(module.tree)
    inside_fstrings = {id(part) for node in ast.walk(module.tree) if isinstance(node, ast.JoinedStr)
                       for part in node.values}
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.JoinedStr):
            head = node.values[0] if node.values else None
            text = head.value if isinstance(head, ast.Constant) and isinstance(head.value, str) else ""
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and id(node) not in inside_fstrings:
            text = node.value
        else:
            continue
        if looks_like_subject(text):
            found.append(f"{module.path}:{node.lineno}: {text!r}")
    return found


def test_no_subject_is_spelled_out_outside_the_subjects_module() -> None:
    offenders = [hit for module in parsed_modules("services", "shared", "meshrtc")
                 if module.path != SUBJECTS_MODULE for hit in subject_literals(module)]
    assert offenders == [], "build these subjects in shared/contracts/subjects.py:\n" + "\n".join(offenders)


def test_the_subjects_module_is_walked_and_holds_every_root() -> None:
    """The walk above must see the module that does build subjects, or it proves nothing."""
    [subjects] = [m for m in parsed_modules("shared") if m.path == SUBJECTS_MODULE]
    hits = "\n".join(subject_literals(subjects))
    for root in SUBJECT_ROOTS:
        assert f"'{root}." in hits, root


@pytest.mark.parametrize(("source", "caught"), [
    ('x = f"sess.{node}.*.up"', True),
    ('x = "heartbeat.*.*"', True),
    ('x = f"$JS.API.CONSUMER.MSG.NEXT.{s}.{d}"', True),
    ('x = "usage.sample"', False),  # an event type
    ('x = "sessions"', False),
    ('x = f"{kind}.{dc}.>"', False),
    ('def f():\n    """events.<dc>.> is where they go."""', False),
    ('log = logging.getLogger("meshrtc.bus")', False),
])
def test_the_detector(source: str, caught: bool) -> None:
    module = ParsedModule(Path("example.py"), "example", ast.parse(source))
    assert bool(subject_literals(module)) is caught
