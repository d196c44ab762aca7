"""Dynacast decisions: the highest layer anybody needs, upgrades at once, downgrades debounced."""

from __future__ import annotations

from livekit.protocol import models, rtc

from services.media.dynacast import NO_LAYER, Dynacast, quality_update


def test_nothing_to_say_while_everyone_needs_the_top_layer() -> None:
    dyn = Dynacast([0, 1, 2])
    for t in range(10):
        assert dyn.update([2, 0, 2], float(t)) is None
    assert dyn.max_layer is None  # the publisher was never told anything: it sends all layers


def test_downgrade_waits_for_the_delay_then_stops_unwatched_layers() -> None:
    dyn = Dynacast([0, 1, 2], downgrade_delay=3.0)
    assert dyn.update([0, 0], 0.0) is None
    assert dyn.update([0, 0], 2.9) is None
    assert dyn.update([0, 0], 3.0) == 0
    assert dyn.update([0, 0], 10.0) is None  # said once


def test_a_need_that_comes_back_within_the_delay_cancels_the_downgrade() -> None:
    dyn = Dynacast([0, 1, 2], downgrade_delay=3.0)
    assert dyn.update([1], 0.0) is None
    assert dyn.update([2], 2.0) is None
    assert dyn.update([1], 4.0) is None  # a new lower period starts here
    assert dyn.update([1], 6.9) is None
    assert dyn.update([1], 7.0) == 1


def test_upgrade_is_immediate() -> None:
    dyn = Dynacast([0, 1, 2], downgrade_delay=1.0)
    dyn.update([0], 0.0)
    assert dyn.update([0], 1.0) == 0
    assert dyn.update([0, 2], 1.1) == 2
    assert dyn.max_layer == 2


def test_paused_and_absent_subscribers_need_nothing() -> None:
    dyn = Dynacast([0, 1, 2], downgrade_delay=1.0)
    dyn.update([NO_LAYER], 0.0)
    assert dyn.update([NO_LAYER], 1.0) == NO_LAYER
    assert dyn.update([], 5.0) is None
    assert dyn.update([1], 5.0) == 1


def test_requests_above_the_published_layers_are_clamped() -> None:
    dyn = Dynacast([0, 1], downgrade_delay=1.0)
    dyn.update([0], 0.0)
    assert dyn.update([0], 1.0) == 0
    assert dyn.update([2], 2.0) == 1


def test_quality_update_message_enables_layers_up_to_the_max() -> None:
    response = quality_update("TR_v", "video/VP8", [0, 1, 2], 1)
    update = response.subscribed_quality_update
    assert update.track_sid == "TR_v"
    flat = {q.quality: q.enabled for q in update.subscribed_qualities}
    assert flat == {models.VideoQuality.LOW: True, models.VideoQuality.MEDIUM: True, models.VideoQuality.HIGH: False}
    assert [c.codec for c in update.subscribed_codecs] == ["vp8"]
    assert {q.quality: q.enabled for q in update.subscribed_codecs[0].qualities} == flat
    none = quality_update("TR_v", "video/VP8", [0, 1, 2], NO_LAYER).subscribed_quality_update
    assert not any(q.enabled for q in none.subscribed_qualities)
    assert isinstance(response, rtc.SignalResponse)
