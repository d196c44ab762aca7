"""Media service entry point."""

from __future__ import annotations

from shared.config import Settings

from .node import MediaNode


async def main(settings: Settings) -> None:
    await MediaNode(settings).run()
