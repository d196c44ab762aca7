"""The billing service's two APIs as they travel over the bus, and the parsing shared by callers.

Light on purpose (no SQL, no NATS): the signal edge builds these queries to forward `GET /usage`
(on `usage_request_subject`) and `GET /stats/rooms/{room}` (on `telemetry_request_subject`), the
billing service answers them, and `meshrtc usage` uses the time parsing.

Usage: a JSON `UsageQuery`; the reply is the usage document (see `services.billing.store`), or
`{"error": "...", "status": 400}` for a query the service refuses. Room stats: a JSON
`RoomStatsQuery`; the reply is the room's latest samples (docs/analytics.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import BillingError

API_VERSION = 1
MAX_ROWS = 10_000
MINUTE_MS = 60_000
MAX_WINDOW_S = 3600  # room stats are a live view, not an export: longer histories come from the stream or SQL


class QueryError(BillingError, ValueError):
    """A usage query that cannot be answered as asked (HTTP 400)."""


def parse_time(text: str | None, name: str = "time") -> int | None:
    """Unix milliseconds from an ISO 8601 time (`2025-01-31T12:00:00Z`, a date, an offset; naive
    means UTC) or a unix timestamp (seconds, or milliseconds when larger than 10^11).
    Empty -> None."""
    if text is None:
        return None
    value = text.strip()
    if not value:
        return None
    if re.fullmatch(r"\d+(\.\d+)?", value):
        number = float(value)
        return int(number) if number >= 1e11 else int(number * 1000)
    iso = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise QueryError(f"invalid {name} {text!r}: expected ISO 8601 (2025-01-31T12:00:00Z) "
                         "or unix seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def iso_ms(ms: int | None) -> str | None:
    """ISO 8601 UTC with a Z, to the millisecond when needed."""
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    text = moment.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True)
class UsageQuery:
    """What usage to report. `project` scopes to one API key (the edge sets it from the token);
    `participant` matches an identity or a participant sid; `[from_ms, to_ms)` selects the minute
    buckets starting in it (from_ms is rounded down to its minute)."""

    project: str | None = None
    room: str | None = None
    participant: str | None = None
    from_ms: int | None = None
    to_ms: int | None = None
    max_rows: int = MAX_ROWS

    def __post_init__(self) -> None:
        if self.from_ms is not None and self.to_ms is not None and self.to_ms <= self.from_ms:
            raise QueryError("'to' must be later than 'from'")
        if not 0 <= self.max_rows <= MAX_ROWS:
            raise QueryError(f"max_rows must be between 0 and {MAX_ROWS}")

    @property
    def from_minute_ms(self) -> int | None:
        return None if self.from_ms is None else self.from_ms - self.from_ms % MINUTE_MS

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> UsageQuery:
        try:
            data = json.loads(raw or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise QueryError(f"usage query is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise QueryError("usage query must be a JSON object")

        def text(key: str) -> str | None:
            value = data.get(key)
            if value is None or value == "":
                return None
            if not isinstance(value, str):
                raise QueryError(f"{key} must be a string")
            return value

        def number(key: str) -> int | None:
            value = data.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int):
                raise QueryError(f"{key} must be an integer (unix ms)")
            return value

        max_rows = data.get("max_rows", MAX_ROWS)
        if isinstance(max_rows, bool) or not isinstance(max_rows, int):
            raise QueryError("max_rows must be an integer")
        return cls(project=text("project"), room=text("room"), participant=text("participant"),
                   from_ms=number("from_ms"), to_ms=number("to_ms"), max_rows=max_rows)

    def describe(self) -> dict[str, Any]:
        return {"project": self.project, "room": self.room, "participant": self.participant,
                "from": iso_ms(self.from_ms), "to": iso_ms(self.to_ms), "from_ms": self.from_ms,
                "to_ms": self.to_ms}


def query_from_params(params: dict[str, str], project: str | None) -> UsageQuery:
    """The query of `GET /usage?room=&participant=&from=&to=&max_rows=` for `project`."""
    max_rows = params.get("max_rows", "")
    if max_rows and not max_rows.isdigit():
        raise QueryError(f"invalid max_rows {max_rows!r}")
    return UsageQuery(
        project=project or None,
        room=params.get("room") or None,
        participant=params.get("participant") or None,
        from_ms=parse_time(params.get("from"), "from"),
        to_ms=parse_time(params.get("to"), "to"),
        max_rows=int(max_rows) if max_rows else MAX_ROWS,
    )


class RoomStatsQuery(BaseModel):
    """What `GET /stats/rooms/{room}` asks for: the latest sample of every track and subscription
    of the room within the last `window_s` seconds, and the layer switches in that window."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    project: str
    room: str = Field(min_length=1)
    window_s: int = Field(default=15, ge=1, le=MAX_WINDOW_S)

    @classmethod
    def decode(cls, data: bytes) -> RoomStatsQuery:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise ValueError(str(exc)) from None
