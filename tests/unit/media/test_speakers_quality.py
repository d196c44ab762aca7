"""Active speaker detection and connection quality buckets."""

from __future__ import annotations

import pytest
from livekit.protocol import models

from services.media.quality import quality_from_loss
from services.media.speakers import ACTIVE_LEVEL, SpeakerChange, SpeakerDetector

LOUD, LOUDER, QUIET = 0.9, 0.95, 0.5

# --- speakers ----------------------------------------------------------------------------------


def test_threshold_is_minus_35_dbov() -> None:
    assert ACTIVE_LEVEL == pytest.approx(92 / 127)


def test_level_at_threshold_is_active_just_below_is_not() -> None:
    d = SpeakerDetector()
    assert d.update({"a": ACTIVE_LEVEL, "b": ACTIVE_LEVEL - 1e-9}) == [SpeakerChange("a", ACTIVE_LEVEL, True)]
    assert d.active == {"a": ACTIVE_LEVEL}


def test_silence_reports_nothing() -> None:
    d = SpeakerDetector()
    assert d.update({}) == []
    assert d.update({"a": QUIET, "b": 0.0}) == []
    assert d.active == {}


def test_start_then_steady_then_stop() -> None:
    d = SpeakerDetector()
    assert d.update({"a": LOUD}) == [SpeakerChange("a", LOUD, True)]
    assert d.update({"a": LOUD}) == []
    assert d.update({"a": LOUD + 0.04}) == []  # not a noticeable change
    assert d.update({"a": QUIET}) == [SpeakerChange("a", 0.0, False)]
    assert d.active == {}
    assert d.update({"a": QUIET}) == []


def test_speaker_missing_from_levels_stops() -> None:
    d = SpeakerDetector()
    d.update({"a": LOUD})
    assert d.update({}) == [SpeakerChange("a", 0.0, False)]


def test_noticeable_level_change_reported() -> None:
    d = SpeakerDetector()
    d.update({"a": 0.80})
    assert d.update({"a": 0.86}) == [SpeakerChange("a", 0.86, True)]
    assert d.update({"a": 0.80}) == [SpeakerChange("a", 0.80, True)]
    assert d.active == {"a": 0.80}


def test_small_change_compared_with_last_reported_level() -> None:
    d = SpeakerDetector()
    d.update({"a": 0.80})
    assert d.update({"a": 0.84}) == []
    assert d.active == {"a": 0.80}  # nothing reported: state keeps the last reported level
    assert d.update({"a": 0.88}) == [SpeakerChange("a", 0.88, True)]


def test_changes_sorted_loudest_first_with_stops_last() -> None:
    d = SpeakerDetector()
    d.update({"old": LOUD})
    changes = d.update({"x": 0.75, "y": LOUDER, "z": 0.85})
    assert changes == [SpeakerChange("y", LOUDER, True), SpeakerChange("z", 0.85, True),
                       SpeakerChange("x", 0.75, True), SpeakerChange("old", 0.0, False)]


def test_only_changed_speakers_reported() -> None:
    d = SpeakerDetector()
    d.update({"a": LOUD, "b": 0.8})
    assert d.update({"a": LOUD, "b": 0.8, "c": LOUDER}) == [SpeakerChange("c", LOUDER, True)]
    assert d.active == {"a": LOUD, "b": 0.8, "c": LOUDER}


def test_custom_threshold() -> None:
    d = SpeakerDetector(threshold=0.3)
    assert d.update({"a": QUIET}) == [SpeakerChange("a", QUIET, True)]
    assert d.update({"a": 0.29}) == [SpeakerChange("a", 0.0, False)]


# --- quality -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("loss", "quality", "score"), [
    (0.0, models.ConnectionQuality.EXCELLENT, 4.5),
    (0.0199, models.ConnectionQuality.EXCELLENT, 4.5),
    (0.02, models.ConnectionQuality.GOOD, 3.5),
    (0.0799, models.ConnectionQuality.GOOD, 3.5),
    (0.08, models.ConnectionQuality.POOR, 2.0),
    (0.4999, models.ConnectionQuality.POOR, 2.0),
    (0.5, models.ConnectionQuality.LOST, 1.0),
    (1.0, models.ConnectionQuality.LOST, 1.0),
])
def test_quality_buckets(loss: float, quality: int, score: float) -> None:
    assert quality_from_loss(loss) == (quality, score)


@pytest.mark.parametrize("loss", [0.5, 0.9, 1.0])
def test_never_lost_for_self_while_publishing(loss: float) -> None:
    assert quality_from_loss(loss, publishing_self=True) == (models.ConnectionQuality.POOR, 2.0)


@pytest.mark.parametrize(("loss", "quality"), [
    (0.0, models.ConnectionQuality.EXCELLENT), (0.05, models.ConnectionQuality.GOOD),
    (0.2, models.ConnectionQuality.POOR),
])
def test_publishing_self_does_not_change_better_buckets(loss: float, quality: int) -> None:
    assert quality_from_loss(loss, publishing_self=True)[0] == quality
