"""Pricing math: LiveKit Cloud's increments (0.01 GB, 1 minute), rounded up per usage."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from shared.config import ConfigError
from shared.pricing import Pricing, Usage, ceil_units, load_pricing, pricing_from_dict

GB = 1_000_000_000


@pytest.mark.parametrize(("ms", "minutes"), [
    (0, 0), (1, 1), (10_000, 1), (59_999, 1), (60_000, 1), (60_001, 2), (70_000, 2), (120_000, 2),
    (3_600_000, 60),
])
def test_connection_minutes_round_up(ms: int, minutes: int) -> None:
    assert Pricing().billed_minutes(ms) == minutes


@pytest.mark.parametrize(("nbytes", "gb"), [
    (0, "0"), (1, "0.01"), (GB // 1000, "0.01"), (10_000_000, "0.01"), (10_000_001, "0.02"),
    (GB, "1.00"), (GB + 1, "1.01"), (123_456_789_012, "123.46"),
])
def test_bandwidth_rounds_up_to_a_hundredth_of_a_gb(nbytes: int, gb: str) -> None:
    assert Pricing().billed_gb(nbytes) == Decimal(gb)


def test_defaults_price_downstream_and_minutes_only() -> None:
    pricing = Pricing()
    charge = pricing.price(Usage(bytes={"downstream": GB // 1000, "upstream": 5 * GB}, connection_ms=10_000))
    assert charge.gb["downstream"] == Decimal("0.01")
    assert charge.bandwidth_usd["downstream"] == Decimal("0.0012")  # 0.01 GB x $0.12
    assert charge.gb["upstream"] == Decimal("5.00")
    assert charge.bandwidth_usd["upstream"] == 0  # upstream is free
    assert charge.connection_minutes == 1
    assert charge.connection_usd == Decimal("0.0005")
    assert charge.total_usd == Decimal("0.0017")


def test_rounding_is_per_usage_not_per_sum() -> None:
    """Two participants with 1 MB each bill 0.01 GB each (0.02 GB), and 10 s each bill a minute each."""
    pricing = Pricing()
    one = Usage(bytes={"downstream": 1_000_000}, connection_ms=10_000)
    total = pricing.price_all([one, one])
    assert total.gb["downstream"] == Decimal("0.02")
    assert total.connection_minutes == 2
    assert total.total_usd == 2 * pricing.price(one).total_usd
    assert pricing.price_all([]).total_usd == 0


def test_ceil_units() -> None:
    assert ceil_units(0, 7) == 0
    assert ceil_units(-5, 7) == 0
    assert ceil_units(7, 7) == 1
    assert ceil_units(8, 7) == 2
    assert ceil_units(Decimal("0.5"), Decimal("0.25")) == 2


def test_to_dict_is_json_friendly() -> None:
    charge = Pricing().price(Usage(bytes={"downstream": 1}, connection_ms=70_000))
    doc = charge.to_dict()
    assert doc["bandwidth_gb"]["downstream"] == 0.01
    assert doc["connection_minutes"] == 2.0
    assert doc["exact_total"] == "0.0022"
    assert doc["total"] == pytest.approx(0.0022)


def test_pricing_file(tmp_path: Path) -> None:
    path = tmp_path / "pricing.yaml"
    path.write_text(
        "version: 1\ncurrency: EUR\n"
        "bandwidth:\n  increment_gb: 0.1\n  per_gb:\n    downstream: 0.05\n    relay_out: 0.02\n"
        "connection:\n  per_minute: 0.001\n  increment_minutes: 5\n")
    pricing = load_pricing(str(path))
    assert pricing.currency == "EUR"
    assert pricing.per_gb["downstream"] == Decimal("0.05")
    assert pricing.per_gb["upstream"] == 0  # default kept
    assert pricing.per_gb["relay_out"] == Decimal("0.02")
    assert pricing.billed_gb(1) == Decimal("0.1")
    assert pricing.billed_minutes(61_000) == 5
    assert pricing.billed_minutes(301_000) == 10
    assert pricing.source == str(path)


def test_no_file_means_defaults() -> None:
    assert load_pricing("") == Pricing()
    assert load_pricing(None).per_gb["downstream"] == Decimal("0.12")


@pytest.mark.parametrize(("text", "message"), [
    ("version: 2\n", "unsupported pricing version"),
    ("bandwidth:\n  per_gb:\n    sideways: 1\n", "unknown direction 'sideways'"),
    ("bandwidth:\n  per_gb:\n    downstream: -1\n", ">= 0"),
    ("bandwidth:\n  per_gb:\n    downstream: cheap\n", "must be a number"),
    ("connection:\n  increment_minutes: 0.5\n", "positive integer"),
    ("bandwidth:\n  increment_gb: 0\n", "increment_gb must be > 0"),
    ("bandwidth: 3\n", "'bandwidth' must be a mapping"),
    ("- a\n- b\n", "mapping at the top level"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_pricing_files_name_the_variable(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_pricing(path)
    assert info.value.variable == "MESHRTC_PRICING_FILE"
    assert message in str(info.value)


def test_missing_pricing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read pricing file"):
        load_pricing(tmp_path / "nope.yaml")


def test_empty_document_is_defaults() -> None:
    assert pricing_from_dict(None).per_minute == Decimal("0.0005")
