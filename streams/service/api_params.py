"""The operator API's query parameters and CSV rows: plain functions, no I/O.

A bad parameter raises ``ParamError``, which the API answers 400 with its message.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from streams.serving.views import LISTED_STATES, index_member

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
CSV_COLUMNS = ("address", "state", "reason", "error_count", "last_error_time", "updated_time")


class ParamError(ValueError):
    """A query parameter the API cannot use; the message says which and why."""


def parse_limit(raw: str | None, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit():
        raise ParamError(f"limit must be a whole number from 1 to {maximum}")
    limit = int(raw)
    if not 1 <= limit <= maximum:
        raise ParamError(f"limit must be a whole number from 1 to {maximum}")
    return limit


def parse_states(raw: str | None) -> tuple[str, ...]:
    """``quarantined``, ``denylisted``, or both when absent."""
    if raw is None:
        return LISTED_STATES
    if raw not in LISTED_STATES:
        raise ParamError(f"state must be one of {', '.join(LISTED_STATES)}")
    return (raw,)


def parse_domain(raw: str | None) -> str | None:
    if raw is None:
        return None
    domain = raw.strip().lower()
    if not domain or any(c.isspace() or c == "@" for c in domain):
        raise ParamError("domain must be a domain name, without '@' or white space")
    return domain


def parse_cursor(raw: str | None) -> str | None:
    """The last address of the previous page (as it was shown)."""
    if raw is None:
        return None
    if not raw or any(c.isspace() for c in raw):
        raise ParamError("cursor must be the next_cursor of a previous page")
    return raw


def lex_range(domain: str | None, cursor: str | None) -> tuple[str, str]:
    """The ZRANGEBYLEX bounds of a page: after ``cursor``, within ``domain`` if given.
    Index members are ``<domain> <address>``: a domain's addresses lie between
    ``<domain> `` and ``<domain>!`` ('!' follows the space)."""
    low, high = ("-", "+") if domain is None else (f"[{domain} ", f"({domain}!")
    if cursor is not None:
        after = f"({index_member(cursor)}"
        if domain is None or after[1:] > low[1:]:
            low = after
    return low, high


def parse_since(raw: str | None, now_ms: int, default_ms: int) -> int:
    """Epoch milliseconds from digits or an ISO 8601 time (UTC when it names no zone);
    ``now_ms - default_ms`` when absent."""
    if raw is None:
        return now_ms - default_ms
    if raw.isascii() and raw.isdigit():
        return int(raw)
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise ParamError("since must be epoch milliseconds or an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0, int(when.timestamp() * 1000))


def csv_row(record: Mapping[str, Any]) -> str:
    """One CSV line (with its line end) of an address record, in ``CSV_COLUMNS`` order."""
    values = {**record, "updated_time": record.get("event_time")}
    return _csv_line(["" if values.get(c) is None else str(values[c]) for c in CSV_COLUMNS])


def csv_header() -> str:
    return _csv_line(list(CSV_COLUMNS))


def _csv_line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue()
