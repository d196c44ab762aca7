from __future__ import annotations

from services.media.rtp.selector import RID_TO_LAYER, LayerInfo, layer_for_quality, select_layer

THREE = [LayerInfo(0, 320, 180), LayerInfo(1, 640, 360), LayerInfo(2, 1280, 720)]


def test_unspecified_gives_highest() -> None:
    assert select_layer(THREE) == 2
    assert select_layer(THREE[:2]) == 1
    assert select_layer(list(reversed(THREE))) == 2


def test_smallest_covering_layer() -> None:
    assert select_layer(THREE, 320, 180) == 0
    assert select_layer(THREE, 200, 100) == 0
    assert select_layer(THREE, 321, 180) == 1
    assert select_layer(THREE, 640, 360) == 1
    assert select_layer(THREE, 641, 0) == 2
    assert select_layer(THREE, 0, 361) == 2
    assert select_layer(THREE, 0, 100) == 0


def test_request_larger_than_all_layers_gives_highest_available() -> None:
    assert select_layer(THREE, 1920, 1080) == 2
    assert select_layer(THREE[:1], 1920, 1080) == 0
    # high layer paused by the publisher: never choose it
    assert select_layer([THREE[0], THREE[1]], 1280, 720) == 1


def test_no_layers() -> None:
    assert select_layer([], 100, 100) == -1
    assert layer_for_quality(2, []) == -1


def test_quality_fallback() -> None:
    assert layer_for_quality(1, [0, 1, 2]) == 1
    assert layer_for_quality(2, [0, 1]) == 1
    assert layer_for_quality(0, [1, 2]) == 1
    assert RID_TO_LAYER == {"q": 0, "h": 1, "f": 2}
