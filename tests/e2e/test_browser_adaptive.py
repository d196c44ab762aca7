"""livekit-client with `adaptiveStream: true` in headless Chromium: showing a simulcast video in a
320x180 element it receives the low layer; enlarged to 1280x720 it moves up to the top layer.
Reuses tests/e2e/test_browser.py's harness (page bundle, dev server, Chromium)."""

from __future__ import annotations

import asyncio
import time

import pytest
from livekit import rtc

from .sdk_helpers import SyntheticVideo, publish_synthetic_video
from .test_browser import (  # noqa: F401 - fixtures are used by name
    JS_LOG_LEVEL,
    Server,
    bundle,
    cancel_all,
    chromium,
    page_url,
    server,
)

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(180),
              pytest.mark.filterwarnings("ignore:.*HMAC key.*")]


async def received_size(browser: object, timeout: float, want: tuple[int, int]) -> tuple[int, int] | None:
    """The frame size of the browser's inbound video once it equals `want` (else the last seen)."""
    deadline = time.monotonic() + timeout
    size = None
    while time.monotonic() < deadline:
        stats = await browser.call("() => window.lk.remoteVideoStats()")  # type: ignore[attr-defined]
        tracks = [t for t in stats["tracks"] if t.get("width")]
        if tracks:
            size = (tracks[0]["width"], tracks[0]["height"])
            if size == want:
                return size
        await asyncio.sleep(0.25)
    return size


async def test_adaptive_stream_follows_the_element_size(page_url: str, server: Server) -> None:  # noqa: F811
    room_name = "adaptive"
    publisher = rtc.Room()
    video: SyntheticVideo | None = None
    try:
        async with chromium(page_url) as browser:
            try:
                await browser.call("([u, t, l]) => window.lk.connect(u, t, {logLevel: l, roomOptions: "
                                   "{adaptiveStream: true}})", server.url, server.token("viewer", room_name),
                                   JS_LOG_LEVEL)
                await publisher.connect(server.url, server.token("camera", room_name))
                video = await publish_synthetic_video(publisher, 1280, 720)
                small = await received_size(browser, 25, (320, 180))
                assert small == (320, 180), f"a 320x180 element should get the low layer, got {small}"
                await asyncio.sleep(6)  # the publisher has ramped up to all layers by now: still the low one
                held = await received_size(browser, 1, (320, 180))
                assert held == (320, 180), f"the small element moved off the low layer: {held}"

                await browser.call("() => { const el = document.getElementById('remote');"
                                   " el.style.width = '1280px'; el.style.height = '720px'; }")
                big = await received_size(browser, 25, (1280, 720))
                assert big == (1280, 720), f"an enlarged element should get the top layer, got {big}"
            except BaseException:
                print(await browser.diagnostics(), "\n--- server log (tail) ---\n" + server.log()[-6000:])
                raise
    finally:
        await cancel_all([video.task] if video is not None and video.task is not None else [])
        await publisher.disconnect()
