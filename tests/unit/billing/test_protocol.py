"""Usage API query parsing (shared.contracts.billing: the signal edge and `meshrtc usage`)."""

from __future__ import annotations

import pytest

from meshrtc.commands.token import UsageError
from meshrtc.commands.usage import format_report, http_url, resolve_time
from shared.contracts.billing import (
    MAX_ROWS,
    QueryError,
    UsageQuery,
    iso_ms,
    parse_time,
    query_from_params,
)
from shared.contracts.subjects import usage_request_subject

T = 1_735_689_600_000  # 2025-01-01T00:00:00Z


def test_subject() -> None:
    assert usage_request_subject("dc1") == "ctl.dc1.billing.usage"
    with pytest.raises(ValueError):
        usage_request_subject("DC.1")


@pytest.mark.parametrize(("text", "ms"), [
    ("2025-01-01T00:00:00Z", T),
    ("2025-01-01T00:00:00+00:00", T),
    ("2025-01-01T01:00:00+01:00", T),
    ("2025-01-01T00:00:00", T),  # naive = UTC
    ("2025-01-01", T),
    ("1735689600", T),  # unix seconds
    ("1735689600.5", T + 500),
    (str(T), T),  # unix ms
    ("", None),
    (None, None),
])
def test_parse_time(text: str | None, ms: int | None) -> None:
    assert parse_time(text) == ms


def test_parse_time_rejects_garbage() -> None:
    with pytest.raises(QueryError, match="invalid from"):
        parse_time("yesterday", "from")


def test_iso_ms() -> None:
    assert iso_ms(T) == "2025-01-01T00:00:00Z"
    assert iso_ms(T + 5) == "2025-01-01T00:00:00.005Z"
    assert iso_ms(None) is None


def test_query_round_trip_and_minute_floor() -> None:
    query = UsageQuery(project="k", room="a.b*", participant="alice", from_ms=T + 59_999, to_ms=T + 120_000)
    assert UsageQuery.from_json(query.to_json()) == query
    assert query.from_minute_ms == T
    assert query.describe()["from"] == "2025-01-01T00:00:59.999Z"


@pytest.mark.parametrize(("raw", "message"), [
    (b"[]", "JSON object"),
    (b"{", "not JSON"),
    (b'{"room": 3}', "room must be a string"),
    (b'{"from_ms": "x"}', "from_ms must be an integer"),
    (b'{"from_ms": 10, "to_ms": 5}', "later than"),
    (b'{"max_rows": 1000000}', "max_rows"),
])
def test_bad_queries(raw: bytes, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        UsageQuery.from_json(raw)


def test_query_from_params() -> None:
    q = query_from_params({"room": "r", "participant": "", "from": "2025-01-01", "to": "1735693200"}, "devkey")
    assert (q.project, q.room, q.participant, q.from_ms, q.to_ms) == ("devkey", "r", None, T, T + 3_600_000)
    assert q.max_rows == MAX_ROWS
    assert query_from_params({"max_rows": "5"}, None).max_rows == 5
    with pytest.raises(QueryError):
        query_from_params({"max_rows": "-1"}, None)


def test_cli_times() -> None:
    assert resolve_time("now", "from", now_ms=T) == "2025-01-01T00:00:00Z"
    assert resolve_time("90m", "from", now_ms=T + 5_400_000) == "2025-01-01T00:00:00Z"
    assert resolve_time("1h30m", "from", now_ms=T + 5_400_000) == "2025-01-01T00:00:00Z"
    assert resolve_time("2025-01-01T00:00:00Z", "to") == "2025-01-01T00:00:00Z"
    assert resolve_time("1735689600", "to") == "2025-01-01T00:00:00Z"
    assert resolve_time(None, "to") is None
    with pytest.raises(UsageError):
        resolve_time("soon", "to")


def test_http_url() -> None:
    assert http_url("ws://127.0.0.1:7880/") == "http://127.0.0.1:7880"
    assert http_url("wss://x.example") == "https://x.example"
    assert http_url("127.0.0.1:7880") == "http://127.0.0.1:7880"


def test_format_report() -> None:
    cost = {"currency": "USD", "bandwidth_gb": {"downstream": 0.01, "upstream": 0.01},
            "bandwidth": {"downstream": 0.0012, "upstream": 0.0}, "connection_minutes": 2.0,
            "connection": 0.001, "total": 0.0022, "exact_total": "0.0022"}
    doc = {
        "query": {"room": "r", "participant": None, "from": None, "to": None},
        "totals": {"participants": 1, "bytes": {"downstream": 20000, "upstream": 10},
                   "packets": {"downstream": 60, "upstream": 1}, "connection_ms": 70000,
                   "connection_minutes": 2.0, "cost": cost},
        "participants": [{"room": "r", "identity": "alice", "bytes": {"downstream": 20000, "upstream": 10},
                          "connection_minutes": 2.0, "cost": cost}],
        "rows": [{"minute": "2025-01-01T00:00:00Z", "identity": "alice", "direction": "downstream",
                  "bytes": 20000, "packets": 60}],
        "rows_truncated": True,
    }
    text = format_report(doc)
    assert "usage (room=r)" in text
    assert "20,000 bytes" in text
    assert "billed 2 min" in text
    assert "total:               0.0022 USD" in text
    assert "alice" in text and "more rows" in text
