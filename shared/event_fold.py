"""What an event fold does with each declared event type: a handler, or a stated reason to ignore it.

A fold written as an `isinstance` chain drops an event type nobody thought of without a word. A
`FoldDispatch` names the handler of every type it folds and, separately, every type it leaves
alone and why; `undecided` lists the declared types (`shared.events.event_classes()`) it says
nothing about, which the exhaustiveness test (tests/unit/test_event_folds.py) requires to be none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from shared.events import EventPayload

H = TypeVar("H")


@dataclass(frozen=True)
class FoldDispatch(Generic[H]):
    name: str  # the fold, as "module:Class" (names it in test failures)
    handlers: Mapping[type[EventPayload], H]
    ignored: Mapping[type[EventPayload], str]  # payload type -> one-line reason the fold leaves it alone

    def handler(self, payload: EventPayload) -> H | None:
        """The handler of `payload`'s type; None for an ignored (or undeclared) type."""
        return self.handlers.get(type(payload))

    @property
    def handled_types(self) -> frozenset[str]:
        """The `TYPE` names of the events this fold handles (e.g. to read just those from the store)."""
        return frozenset(cls.TYPE for cls in self.handlers)

    def undecided(self, declared: Iterable[type[EventPayload]]) -> list[str]:
        """The declared event types this fold neither handles nor ignores."""
        return sorted(cls.TYPE for cls in declared if cls not in self.handlers and cls not in self.ignored)

    def both_handled_and_ignored(self) -> list[str]:
        return sorted(cls.TYPE for cls in self.handlers if cls in self.ignored)
