from __future__ import annotations

import random

from meshrtc.lab.shaper import Direction, Shape


def test_a_frame_is_released_once_its_delay_is_over_and_not_before() -> None:
    direction = Direction()
    assert direction.offer(b"one", now=10.0, shape=Shape(delay_ms=30))
    assert direction.pop_due(10.029) == []
    assert direction.next_deadline() == 10.030
    assert direction.pop_due(10.030) == [b"one"]
    assert direction.passed == 1 and len(direction) == 0


def test_frames_keep_their_order() -> None:
    direction = Direction()
    for index in range(5):
        direction.offer(bytes([index]), now=1.0, shape=Shape(delay_ms=20))
    assert direction.pop_due(2.0) == [bytes([index]) for index in range(5)]


def test_loss_drops_about_the_configured_share() -> None:
    direction = Direction(rng=random.Random(7))
    kept = sum(direction.offer(b"x", 0.0, Shape(delay_ms=0, loss_percent=30)) for _ in range(10_000))
    assert 6_700 < kept < 7_300
    assert direction.lost == 10_000 - kept


def test_no_loss_means_every_frame_arrives() -> None:
    direction = Direction(rng=random.Random(1))
    assert all(direction.offer(b"x", 0.0, Shape(delay_ms=5)) for _ in range(1000))


def test_a_full_queue_drops_new_frames_and_counts_them() -> None:
    direction = Direction(limit=3)
    results = [direction.offer(b"x", 0.0, Shape(delay_ms=10)) for _ in range(5)]
    assert results == [True, True, True, False, False]
    assert direction.overflowed == 2


def test_counters_name_every_way_a_frame_can_go() -> None:
    direction = Direction(rng=random.Random(3), limit=1)
    direction.offer(b"x", 0.0, Shape(delay_ms=0))
    direction.offer(b"y", 0.0, Shape(delay_ms=0))
    direction.offer(b"z", 0.0, Shape(delay_ms=0, loss_percent=100))
    direction.pop_due(1.0)
    assert direction.counters() == {"passed": 1, "lost": 1, "overflowed": 1, "undeliverable": 0}
