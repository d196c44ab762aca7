"""Pricing of metered usage: what a participant's bytes and connection time cost.

The model is LiveKit Cloud's: bandwidth is billed per GB in increments of 0.01 GB and connection
time per minute in increments of one minute, each *rounded up per usage*. A usage is one
participant session (one participant sid) within the period asked about: its bytes in one
direction are rounded up to the next 0.01 GB, its connection time to the next whole minute.
So a 10 s session bills 1 minute, a 70 s one 2 minutes, and 1 MB (0.001 GB) bills 0.01 GB.

Rates come from a YAML file (MESHRTC_PRICING_FILE, `Settings.pricing_file`); anything it leaves
out keeps the default below. Amounts are `Decimal`, so 0.01 GB x $0.12 is exactly $0.0012.

```yaml
version: 1
currency: USD
bandwidth:
  gb_bytes: 1000000000      # one GB (decimal, as cloud providers bill)
  increment_gb: 0.01
  per_gb: {downstream: 0.12, upstream: 0, relay_out: 0, relay_in: 0}
connection:
  per_minute: 0.0005
  increment_minutes: 1
```
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from shared.config import ConfigError

PRICING_VARIABLE = "MESHRTC_PRICING_FILE"
DIRECTIONS = ("upstream", "downstream", "relay_out", "relay_in")
MINUTE_MS = 60_000

DEFAULT_PER_GB: dict[str, Decimal] = {
    "downstream": Decimal("0.12"),
    "upstream": Decimal("0"),
    "relay_out": Decimal("0"),
    "relay_in": Decimal("0"),
}


def ceil_units(quantity: int | Decimal, increment: int | Decimal) -> int:
    """How many `increment`s cover `quantity` (rounded up; 0 for nothing)."""
    if quantity <= 0:
        return 0
    return int((Decimal(quantity) / Decimal(increment)).to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True)
class Usage:
    """What one participant session used: bytes per direction and connection time."""

    bytes: Mapping[str, int] = field(default_factory=dict)
    connection_ms: int = 0


@dataclass
class Charge:
    """Billed quantities (after rounding up) and their cost. Charges add up with `+`."""

    gb: dict[str, Decimal] = field(default_factory=lambda: {d: Decimal(0) for d in DIRECTIONS})
    bandwidth_usd: dict[str, Decimal] = field(default_factory=lambda: {d: Decimal(0) for d in DIRECTIONS})
    connection_minutes: Decimal = Decimal(0)
    connection_usd: Decimal = Decimal(0)

    @property
    def total_usd(self) -> Decimal:
        return sum(self.bandwidth_usd.values(), Decimal(0)) + self.connection_usd

    def __add__(self, other: Charge) -> Charge:
        return Charge(
            gb={d: self.gb.get(d, Decimal(0)) + other.gb.get(d, Decimal(0)) for d in DIRECTIONS},
            bandwidth_usd={d: self.bandwidth_usd.get(d, Decimal(0)) + other.bandwidth_usd.get(d, Decimal(0))
                           for d in DIRECTIONS},
            connection_minutes=self.connection_minutes + other.connection_minutes,
            connection_usd=self.connection_usd + other.connection_usd,
        )

    def to_dict(self, currency: str = "USD") -> dict[str, Any]:
        """JSON-friendly: quantities and amounts as numbers (exact decimals as strings in `exact`)."""
        return {
            "currency": currency,
            "bandwidth_gb": {d: float(v) for d, v in self.gb.items()},
            "bandwidth": {d: float(v) for d, v in self.bandwidth_usd.items()},
            "connection_minutes": float(self.connection_minutes),
            "connection": float(self.connection_usd),
            "total": float(self.total_usd),
            "exact_total": str(self.total_usd.normalize()) if self.total_usd else "0",
        }


@dataclass(frozen=True)
class Pricing:
    currency: str = "USD"
    gb_bytes: int = 1_000_000_000
    increment_gb: Decimal = Decimal("0.01")
    per_gb: Mapping[str, Decimal] = field(default_factory=lambda: dict(DEFAULT_PER_GB))
    per_minute: Decimal = Decimal("0.0005")
    increment_minutes: int = 1
    source: str = "defaults"

    @property
    def increment_bytes(self) -> Decimal:
        return self.increment_gb * self.gb_bytes

    def billed_gb(self, nbytes: int) -> Decimal:
        """0.001 GB -> 0.01 GB: bytes rounded up to the bandwidth increment, in GB."""
        return ceil_units(nbytes, self.increment_bytes) * self.increment_gb

    def billed_minutes(self, connection_ms: int) -> Decimal:
        """10 s -> 1, 70 s -> 2: connection time rounded up to the minute increment."""
        return Decimal(ceil_units(connection_ms, self.increment_minutes * MINUTE_MS) * self.increment_minutes)

    def price(self, usage: Usage) -> Charge:
        """The charge for one usage (one participant session), each quantity rounded up on its own."""
        charge = Charge()
        for direction, nbytes in usage.bytes.items():
            gb = self.billed_gb(nbytes)
            charge.gb[direction] = charge.gb.get(direction, Decimal(0)) + gb
            charge.bandwidth_usd[direction] = (charge.bandwidth_usd.get(direction, Decimal(0))
                                               + gb * self.per_gb.get(direction, Decimal(0)))
        charge.connection_minutes = self.billed_minutes(usage.connection_ms)
        charge.connection_usd = charge.connection_minutes * self.per_minute
        return charge

    def price_all(self, usages: Iterable[Usage]) -> Charge:
        total = Charge()
        for usage in usages:
            total = total + self.price(usage)
        return total

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "currency": self.currency,
            "gb_bytes": self.gb_bytes,
            "increment_gb": float(self.increment_gb),
            "per_gb": {d: float(v) for d, v in self.per_gb.items()},
            "per_minute": float(self.per_minute),
            "increment_minutes": self.increment_minutes,
        }


def _decimal(value: Any, where: str, origin: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ConfigError(PRICING_VARIABLE, f"{origin}: {where} must be a number, got {value!r}")
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(PRICING_VARIABLE, f"{origin}: {where} must be a number, got {value!r}") from None
    if not result.is_finite() or result < 0:
        raise ConfigError(PRICING_VARIABLE, f"{origin}: {where} must be a finite number >= 0, got {value!r}")
    return result


def _section(data: Mapping[str, Any], key: str, origin: str) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(PRICING_VARIABLE, f"{origin}: '{key}' must be a mapping")
    return value


def pricing_from_dict(data: Mapping[str, Any] | None, origin: str = "pricing") -> Pricing:
    """Build a Pricing from the parsed YAML document (missing keys keep their defaults)."""
    data = data or {}
    if not isinstance(data, Mapping):
        raise ConfigError(PRICING_VARIABLE, f"{origin}: expected a mapping at the top level")
    version = data.get("version", 1)
    if version != 1:
        raise ConfigError(PRICING_VARIABLE, f"{origin}: unsupported pricing version {version!r} (expected 1)")
    default = Pricing()
    bandwidth = _section(data, "bandwidth", origin)
    connection = _section(data, "connection", origin)
    per_gb = dict(DEFAULT_PER_GB)
    rates = bandwidth.get("per_gb") or {}
    if not isinstance(rates, Mapping):
        raise ConfigError(PRICING_VARIABLE, f"{origin}: 'bandwidth.per_gb' must be a mapping of direction to rate")
    for direction, rate in rates.items():
        if direction not in DIRECTIONS:
            raise ConfigError(PRICING_VARIABLE, f"{origin}: unknown direction {direction!r} in bandwidth.per_gb "
                                                f"(expected one of {', '.join(DIRECTIONS)})")
        per_gb[direction] = _decimal(rate, f"bandwidth.per_gb.{direction}", origin)
    gb_bytes = _decimal(bandwidth.get("gb_bytes", default.gb_bytes), "bandwidth.gb_bytes", origin)
    increment_gb = _decimal(bandwidth.get("increment_gb", default.increment_gb), "bandwidth.increment_gb", origin)
    increment_minutes = _decimal(connection.get("increment_minutes", default.increment_minutes),
                                 "connection.increment_minutes", origin)
    if gb_bytes <= 0 or gb_bytes != gb_bytes.to_integral_value():
        raise ConfigError(PRICING_VARIABLE, f"{origin}: bandwidth.gb_bytes must be a positive integer")
    if increment_gb <= 0:
        raise ConfigError(PRICING_VARIABLE, f"{origin}: bandwidth.increment_gb must be > 0")
    if increment_minutes <= 0 or increment_minutes != increment_minutes.to_integral_value():
        raise ConfigError(PRICING_VARIABLE, f"{origin}: connection.increment_minutes must be a positive integer")
    currency = data.get("currency", default.currency)
    if not isinstance(currency, str) or not currency:
        raise ConfigError(PRICING_VARIABLE, f"{origin}: currency must be a non-empty string")
    return Pricing(
        currency=currency,
        gb_bytes=int(gb_bytes),
        increment_gb=increment_gb,
        per_gb=per_gb,
        per_minute=_decimal(connection.get("per_minute", default.per_minute), "connection.per_minute", origin),
        increment_minutes=int(increment_minutes),
        source=origin,
    )


def load_pricing(path: str | Path | None = None) -> Pricing:
    """The pricing in the YAML file at `path`, or the defaults when `path` is empty."""
    if not path:
        return Pricing()
    import yaml

    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(PRICING_VARIABLE, f"cannot read pricing file {str(file)!r}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(PRICING_VARIABLE, f"{file}: not valid YAML ({detail})") from None
    return pricing_from_dict(data, str(file))
