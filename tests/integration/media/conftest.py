"""These tests build MediaPeers without a media node: install aiortc's hooks as the node does."""

from __future__ import annotations

import pytest

from services.media.webrtc import aiortc_compat


@pytest.fixture(autouse=True, scope="session")
def aiortc_hooks() -> None:
    aiortc_compat.install()
