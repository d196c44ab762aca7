"""Logging set-up shared by every service: one line per record, with the service and node."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO", service: str = "", node: str = "") -> None:
    tag = f"{service}/{node}" if service else "meshrtc"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{tag}] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aioice", "aiortc", "nats", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
