"""Relay service wiring. Connected to the bus and beating; its domain logic lands with the
relay issue."""

from __future__ import annotations

from shared.config import Settings
from shared.service import Service


class RelayService(Service):
    name = "relay"


async def main(settings: Settings) -> None:
    await RelayService(settings).run()
