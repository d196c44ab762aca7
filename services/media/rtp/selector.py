"""Simulcast layer choice for a subscriber (from UpdateTrackSettings width/height)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "LAYER_HIGH",
    "LAYER_LOW",
    "LAYER_MEDIUM",
    "RID_TO_LAYER",
    "LayerInfo",
    "layer_for_quality",
    "select_layer",
]

LAYER_LOW = 0  # rid "q"
LAYER_MEDIUM = 1  # rid "h"
LAYER_HIGH = 2  # rid "f"
RID_TO_LAYER = {"q": LAYER_LOW, "h": LAYER_MEDIUM, "f": LAYER_HIGH}


class LayerInfo(NamedTuple):
    """A layer the publisher is currently sending, with its (scaled) dimensions."""

    layer: int
    width: int
    height: int


def select_layer(layers: Iterable[LayerInfo], width: int = 0, height: int = 0) -> int:
    """Layer index for a subscriber asking for ``width`` x ``height`` pixels.

    The smallest available layer covering the request in both dimensions (a 0 dimension is
    "don't care"); the highest available layer when nothing is requested or no layer is big
    enough. Only layers in ``layers`` are candidates; -1 if there are none.
    """
    available = sorted(layers, key=lambda li: (li.width * li.height, li.layer))
    if not available:
        return -1
    highest = max(available, key=lambda li: li.layer).layer
    if width <= 0 and height <= 0:
        return highest
    for li in available:
        if (width <= 0 or li.width >= width) and (height <= 0 or li.height >= height):
            return li.layer
    return highest


def layer_for_quality(quality: int, available: Iterable[int]) -> int:
    """Layer for the deprecated ``VideoQuality`` setting: the highest available layer not above
    ``quality``, else the lowest available one; -1 if none is available."""
    layers = sorted(set(available))
    if not layers:
        return -1
    best = layers[0]
    for layer in layers:
        if layer <= quality:
            best = layer
    return best
