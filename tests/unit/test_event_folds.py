"""Every fold over events decides on every declared event type: it handles it or says why not."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from services.media.roster import ROSTER_FOLD
from services.room.state import ROOM_STATE_FOLD
from services.room.webhooks import CONTEXT_TYPES, WEBHOOK_FOLD, WEBHOOK_SOURCE_TYPES
from shared.event_fold import FoldDispatch
from shared.events import EventPayload, RoomCreated, TrackMuted, event_classes, known_event_types

FOLDS: list[FoldDispatch[Any]] = [ROOM_STATE_FOLD, ROSTER_FOLD, WEBHOOK_FOLD]


@pytest.mark.parametrize("fold", FOLDS, ids=lambda fold: fold.name)
def test_every_declared_event_type_is_handled_or_ignored(fold: FoldDispatch[Any]) -> None:
    assert fold.undecided(event_classes()) == [], f"{fold.name}: handle these event types or declare them ignored"


@pytest.mark.parametrize("fold", FOLDS, ids=lambda fold: fold.name)
def test_no_event_type_is_both_handled_and_ignored(fold: FoldDispatch[Any]) -> None:
    assert fold.both_handled_and_ignored() == []


@pytest.mark.parametrize("fold", FOLDS, ids=lambda fold: fold.name)
def test_a_fold_names_only_declared_types_and_gives_every_ignore_a_reason(fold: FoldDispatch[Any]) -> None:
    declared = set(event_classes())
    assert set(fold.handlers) <= declared
    assert set(fold.ignored) <= declared
    assert all(reason.strip() and "\n" not in reason for reason in fold.ignored.values())


def test_event_classes_are_the_registry() -> None:
    assert [cls.TYPE for cls in event_classes()] == known_event_types()


class _NewEvent(EventPayload):  # deliberately not registered: stands for a type added tomorrow
    TYPE: ClassVar[str] = "test.brand_new"


@pytest.mark.parametrize("fold", FOLDS, ids=lambda fold: fold.name)
def test_a_new_event_type_nobody_decided_on_is_reported(fold: FoldDispatch[Any]) -> None:
    assert fold.undecided([*event_classes(), _NewEvent]) == ["test.brand_new"]


def test_both_handled_and_ignored_is_reported() -> None:
    fold: FoldDispatch[str] = FoldDispatch("test", handlers={RoomCreated: "h"}, ignored={RoomCreated: "why"})
    assert fold.both_handled_and_ignored() == ["room.created"]
    assert fold.handler(RoomCreated(sid="RM_1", name="r")) == "h"
    assert fold.handler(TrackMuted(sid="TR_1", participant_sid="PA_1", muted=True)) is None


def test_webhooks_read_from_the_store_every_type_their_room_state_folds() -> None:
    assert WEBHOOK_SOURCE_TYPES == {"room.created", "room.finished", "participant.active", "participant.left",
                                    "track.published", "track.unpublished"}
    assert CONTEXT_TYPES == ROOM_STATE_FOLD.handled_types | WEBHOOK_SOURCE_TYPES
    assert {"participant.joined", "participant.updated", "room.metadata_updated", "track.muted"} <= CONTEXT_TYPES
