"""The billing hot path decodes usage samples without pydantic; it must agree with the real decoder
and step aside for anything unusual."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.billing.app import _TRACK_SAMPLE, FastSample, fast_sample
from shared.events import Direction, Envelope, RoomCreated, UsageSample


def canonical(**changes: Any) -> dict[str, Any]:
    sample = UsageSample(project="key", room="r.*> 1", room_sid="RM_1", participant_sid="PA_1", identity="ali ce",
                         direction=Direction.DOWNSTREAM, bytes=123_456, packets=99, connection_ms=0,
                         start_ms=1_000, end_ms=6_000)
    data = json.loads(Envelope.new(sample, dc="dc1", node="media-1", room=sample.room).to_json())
    data["payload"].update(changes)
    return data  # type: ignore[no-any-return]


@pytest.mark.parametrize("direction", list(Direction))
def test_agrees_with_the_validating_decoder(direction: Direction) -> None:
    data = canonical(direction=direction.value, connection_ms=5000)
    fast = fast_sample(data)
    slow = Envelope.from_dict(data).payload
    assert isinstance(fast, FastSample) and isinstance(slow, UsageSample)
    for name in FastSample._fields:
        assert getattr(fast, name) == getattr(slow, name), name
    assert fast.direction is direction


def test_track_samples_short_circuit() -> None:
    assert fast_sample(canonical(track_sid="TR_1")) is _TRACK_SAMPLE


def test_optional_fields_default_like_the_model() -> None:
    data = canonical()
    for name in ("room_sid", "participant_sid", "identity", "track_sid", "bytes", "packets", "connection_ms"):
        del data["payload"][name]
    fast = fast_sample(data)
    slow = Envelope.from_dict(data).payload
    assert fast is not None
    for name in FastSample._fields:
        assert getattr(fast, name) == getattr(slow, name), name


@pytest.mark.parametrize("data", [
    canonical(bytes="12"),  # coercible: pydantic decides
    canonical(bytes=True),
    canonical(bytes=1.5),
    canonical(direction="sideways"),
    canonical(project=None),
    {**canonical(), "v": 2},
    {k: v for k, v in canonical().items() if k != "id"},
    {**canonical(), "payload": None},
    json.loads(Envelope.new(RoomCreated(sid="RM_1", name="r"), dc="dc1", node="n").to_json()),
    [1, 2],
    "text",
])
def test_anything_unusual_goes_to_the_full_decoder(data: Any) -> None:
    assert fast_sample(data) is None


def test_missing_times_go_to_the_full_decoder() -> None:
    data = canonical()
    del data["payload"]["end_ms"]
    assert fast_sample(data) is None


def test_an_older_schema_version_steps_aside_for_the_upcasters(monkeypatch: pytest.MonkeyPatch) -> None:
    data = canonical()
    assert data["v"] == UsageSample.VERSION and fast_sample(data) is not None
    monkeypatch.setattr(UsageSample, "VERSION", UsageSample.VERSION + 1)
    assert fast_sample(data) is None  # a stored older sample is decoded by from_dict, through its upcasters
