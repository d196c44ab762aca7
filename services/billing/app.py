"""Billing service wiring. Connected to the bus and beating; its domain logic lands with the
billing issue."""

from __future__ import annotations

from shared.config import Settings
from shared.service import Service


class BillingService(Service):
    name = "billing"


async def main(settings: Settings) -> None:
    await BillingService(settings).run()
