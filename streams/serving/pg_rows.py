"""The PostgreSQL sink's pure part: output records → table rows, and a batch folded to one
operation per key under the version rule. No database here (streams/serving/pg_sink.py
writes what this computes).

Version rule: a row is replaced by a record of the same key with an equal or higher
version, never by a lower one (equal: the same state published again after a crash). A
delivery-log row keeps its recipient when the record replacing it has none (a change that
time alone made). A tombstone on the address topic deletes the address row unless the row
is newer than it (its ``version`` header; without one it deletes whatever is there).
Delivery-log rows stay when their message retires, and the KPI topic has no tombstones.

Retired addresses are remembered (``mta_address_gone``) with the highest version of their
tombstones, unless a newer row is left: an address record at or below that version is of
the old life, arriving late, and is skipped; a higher one (a reborn address: the workers
carry its version on) is written and the entry dropped. A tombstone without a version
guards nothing and drops the entry.

A batch is folded per key into at most one delete (with what to remember) followed by at
most one upsert, which the database applies as all deletes then all upserts, each guarded
by the version rule and the remembered versions: the outcome equals applying the batch's
records one by one (tests/unit/test_pg_rows.py). A tombstone without a version after an
upsert of its key starts a new batch (``splits_at``): what it leaves remembered depends on
whether that upsert passed, which only the database knows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.pipeline.topics import Topic

# Columns of each staging table, in COPY order; times are epoch ms there (the upsert turns
# them into timestamptz). ``key`` of each table is its first column.
STATUS_COLUMNS = (
    "message_id",
    "delivery_id",
    "recipient",
    "status",
    "failure_type",
    "failure_reason",
    "bounce_class",
    "rule",
    "attempts",
    "next_attempt_ms",
    "event_ms",
    "version",
)
ADDRESS_COLUMNS = (
    "address",
    "state",
    "error_count",
    "reason",
    "last_error_ms",
    "event_ms",
    "version",
)
KPI_COLUMNS = (
    "delivery_id",
    "to_deliver",
    "taken_into_account",
    "sent",
    "failed",
    "failed_hard",
    "failed_soft",
    "pending",
    "bounces_errors",
    "success_pct",
    "event_ms",
    "version",
)
COLUMNS: dict[str, tuple[str, ...]] = {
    Topic.STATUS: STATUS_COLUMNS,
    Topic.ADDRESS: ADDRESS_COLUMNS,
    Topic.KPI: KPI_COLUMNS,
}
# Record fields a row cannot do without (the others have schema defaults or may be null).
_REQUIRED: dict[str, tuple[str, ...]] = {
    Topic.STATUS: ("message_id", "delivery_id", "status", "event_time", "version"),
    Topic.ADDRESS: ("address", "state", "event_time", "version"),
    Topic.KPI: ("delivery_id", "event_time", "version"),
}
_INTS = frozenset(
    {"bounce_class", "attempts", "next_attempt_time", "event_time", "version", "error_count"}
    | {"last_error_time", *KPI_COLUMNS[1:9]}
)

# What the columns hold: times within years 1-9999 (timestamptz), 32-bit counts.
_BIGINT = (-(2**63), 2**63 - 1)
_TIME = (-62_135_596_800_000, 253_402_300_799_999)
_INT = (-(2**31), 2**31 - 1)
_LIMITS = {
    "event_time": _TIME,
    "next_attempt_time": _TIME,
    "last_error_time": _TIME,
    "bounce_class": _INT,
    "attempts": _INT,
    "error_count": _INT,
}

Row = tuple[Any, ...]


class BadRecord(ValueError):
    """A decoded record that cannot become a row; the reason goes to the dead-letter topic."""


def _get(value: dict[str, Any], name: str, topic: str) -> Any:
    got = value.get(name)
    if got is None:
        if name in _REQUIRED[topic]:
            raise BadRecord(f"{topic} record without {name}")
        return None
    if name in _INTS:
        if isinstance(got, bool) or not isinstance(got, int):
            raise BadRecord(f"{topic} record: {name} is not an integer")
        if not _LIMITS.get(name, _BIGINT)[0] <= got <= _LIMITS.get(name, _BIGINT)[1]:
            raise BadRecord(f"{topic} record: {name} {got} is out of range")
    elif isinstance(got, str) and "\x00" in got:
        raise BadRecord(f"{topic} record: {name} contains a NUL character")  # text refuses it
    return got


def to_row(topic: str, value: dict[str, Any]) -> Row:
    """The staging row of a decoded status, address or KPI record (``BadRecord`` if not)."""
    if topic not in COLUMNS:
        raise BadRecord(f"the sink does not read {topic!r} records")
    g = lambda name: _get(value, name, topic)  # noqa: E731
    if topic == Topic.STATUS:
        return (
            g("message_id"),
            g("delivery_id"),
            g("recipient"),  # null for a change time alone made, and in older records
            g("status"),
            g("failure_type"),
            g("failure_reason"),
            g("bounce_class"),
            g("rule"),
            g("attempts") or 0,
            g("next_attempt_time"),
            g("event_time"),
            g("version"),
        )
    if topic == Topic.ADDRESS:
        return (
            g("address"),
            g("state"),
            g("error_count") or 0,
            g("reason"),
            g("last_error_time"),
            g("event_time"),
            g("version"),
        )
    pct = value.get("success_pct", 0.0)
    if isinstance(pct, bool) or not isinstance(pct, int | float):
        raise BadRecord("kpi record: success_pct is not a number")
    counts = tuple(g(name) or 0 for name in KPI_COLUMNS[1:9])
    return (g("delivery_id"), *counts, float(pct), g("event_time"), g("version"))


def version_of(row: Row) -> int:
    return int(row[-1])


def applies(stored_version: int | None, incoming_version: int) -> bool:
    """Whether a record replaces the stored row (none stored: it is inserted)."""
    return stored_version is None or incoming_version >= stored_version


def deletes(stored_version: int, tombstone_version: int | None) -> bool:
    """Whether a tombstone removes the stored row (no version: it always does)."""
    return tombstone_version is None or stored_version <= tombstone_version


@dataclass
class Gone:
    """A batch's tombstones of one address: the row deleted up to ``bound`` (None: any
    version); the remembered entry dropped first when ``forget``, then raised to
    ``remember`` (None: not) unless a row is left."""

    bound: int | None
    forget: bool = False
    remember: int | None = None


@dataclass
class Batch:
    """One batch of records folded per table and key, with the next offset to read of
    every partition it covers. Per key: at most one address delete (``deleted``), applied
    before at most one upsert (``rows``)."""

    rows: dict[str, dict[str, Row]] = field(default_factory=lambda: {t: {} for t in COLUMNS})
    deleted: dict[str, Gone] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    records: int = 0

    def upsert(self, topic: str, row: Row) -> None:
        table = self.rows[topic]
        held = table.get(row[0])
        if held is None or row[-1] >= held[-1]:  # ``applies``, inlined: once per record
            if topic == Topic.STATUS and row[2] is None and held is not None:
                row = (*row[:2], held[2], *row[3:])  # the recipient stays
            table[row[0]] = row

    def splits_at(self, topic: str, key: str, version: int | None) -> bool:
        """Whether this tombstone must go into a new batch (see the module's doc)."""
        return topic == Topic.ADDRESS and version is None and key in self.rows[topic]

    def tombstone(self, topic: str, key: str, version: int | None) -> None:
        """A retired key. Only address rows are deleted; other tombstones change nothing."""
        if topic != Topic.ADDRESS:
            return
        table = self.rows[topic]
        held = table.get(key)
        # An upsert newer than the tombstone survives it: the row it leaves is newer still.
        if held is not None and not deletes(version_of(held), version):
            return
        table.pop(key, None)
        gone = self.deleted.get(key)
        if gone is None:
            gone = self.deleted[key] = Gone(version)
        elif gone.bound is not None:
            # Two deletes in a row remove whatever is at or below the higher version.
            gone.bound = None if version is None else max(gone.bound, version)
        if version is None:
            gone.forget, gone.remember = True, None
        elif gone.remember is None or version > gone.remember:
            gone.remember = version

    def seen(self, topic: str, partition: int, offset: int) -> None:
        self.offsets[(topic, partition)] = offset + 1
        self.records += 1

    def upserts(self, topic: str) -> list[Row]:
        return list(self.rows[topic].values())

    def address_deletes(self) -> list[tuple[str, Gone]]:
        return list(self.deleted.items())


_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> float:
    """``90d``, ``12h``, ``30m``, ``45s``, ``2w`` or bare seconds → seconds (> 0)."""
    raw = text.strip().lower()
    unit = _UNITS_S.get(raw[-1:]) if raw else None
    number = raw[:-1] if unit else raw
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration such as 90d, 12h, 30m or 45s") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{text!r}: the duration must be positive")
    return seconds
