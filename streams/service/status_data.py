"""What the status page at ``/`` shows, computed from plain values (no Redis, no broker):
throttle rows per provider group, the throttle history as chart series, deliveries with
their Success %. ``status_page.py`` reads the stores and calls these."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from streams.domain.control.mx_rules import DEFAULT_GROUP, MxRules

HISTORY_HOURS = 6
HOUR_MS = 3_600_000
MAX_SERIES = 12  # keys charted: the most recently changed ones
MAX_DELIVERIES = 20


def parse_fields(raw: Mapping[str, str]) -> dict[str, Any]:
    """A flattened view record (a hash or a stream entry) back into values: the view
    updater writes strings as they are and every other value as JSON."""
    out: dict[str, Any] = {}
    for name, value in raw.items():
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def group_of(key: str) -> str:
    """The provider group a throttle key belongs to (``domain:`` keys: their group is
    resolved by the caller; here ``default``)."""
    kind, _, rest = key.partition(":")
    if kind == "group":
        return rest
    if kind == "ip_group":
        return rest.rpartition("|")[2]
    return DEFAULT_GROUP


def baseline(rules: MxRules, key: str) -> int:
    """The baseline messages per hour of a throttle key's group."""
    if key.startswith("domain:"):
        name = rules.group_for(key.removeprefix("domain:"))
    else:
        name = group_of(key)
    return rules.group(name).max_rate_per_hour.baseline


def _pct(rate: Any, base: int) -> float | None:
    return round(100.0 * rate / base, 1) if isinstance(rate, int | float) and base else None


def throttle_rows(rules: MxRules, settings: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per provider group (its setting, or its baseline when none was published),
    then one per other throttled key (domains, IP x group), each sorted by key."""
    by_key = {s["key"]: s for s in settings if isinstance(s.get("key"), str)}
    rows = []
    for name in sorted(rules.groups):
        key = f"group:{name}"
        rows.append(_row(rules, key, by_key.pop(key, None)))
    rows += [_row(rules, key, by_key[key]) for key in sorted(by_key)]
    return rows


def _row(rules: MxRules, key: str, setting: Mapping[str, Any] | None) -> dict[str, Any]:
    base = baseline(rules, key)
    if setting is None:
        group = rules.group(group_of(key))
        return {
            "key": key,
            "scope": "group",
            "mode": "normal",
            "rate": base,
            "baseline": base,
            "pct": 100.0,
            "connections": group.max_connections.baseline,
            "reason": "baseline (no change published)",
            "event_time": None,
            "suspended_until": None,
        }
    rate = setting.get("max_rate_per_hour")
    return {
        "key": key,
        "scope": str(setting.get("scope", "")),
        "mode": str(setting.get("mode", "")),
        "rate": rate,
        "baseline": base,
        "pct": _pct(rate, base),
        "connections": setting.get("max_connections"),
        "reason": str(setting.get("reason", "")),
        "event_time": setting.get("event_time"),
        "suspended_until": setting.get("suspended_until"),
    }


def history_series(
    rules: MxRules, entries: Iterable[Mapping[str, Any]], hours: int = HISTORY_HOURS
) -> dict[str, Any]:
    """Throttle changes of the ``hours`` (event time) ending at the newest change, as one
    step series per key: points of (time, rate, % of baseline, mode), oldest first. A key
    changed before the window starts it with the value then in effect."""
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        key, t = entry.get("key"), entry.get("event_time")
        if isinstance(key, str) and isinstance(t, int) and not isinstance(t, bool):
            by_key.setdefault(key, []).append(entry)
    if not by_key:
        return {"hours": hours, "start": None, "end": None, "series": []}
    end = max(e["event_time"] for changes in by_key.values() for e in changes)
    start = end - hours * HOUR_MS
    series = []
    for key, changes in by_key.items():
        changes.sort(key=lambda e: (e["event_time"], e.get("version", 0)))
        inside = [e for e in changes if e["event_time"] >= start]
        before = [e for e in changes if e["event_time"] < start]
        if not inside:
            continue  # unchanged in the window: the table shows its setting
        base = baseline(rules, key)
        points = [_point(before[-1], base, start)] if before else []
        points += [_point(e, base, e["event_time"]) for e in inside]
        series.append({"key": key, "baseline": base, "points": points})
    series.sort(key=lambda s: (-s["points"][-1]["t"], s["key"]))
    series = sorted(series[:MAX_SERIES], key=lambda s: s["key"])
    return {"hours": hours, "start": start, "end": end, "series": series}


def _point(entry: Mapping[str, Any], base: int, t: int) -> dict[str, Any]:
    rate = entry.get("max_rate_per_hour")
    return {"t": t, "rate": rate, "pct": _pct(rate, base), "mode": str(entry.get("mode", ""))}


def delivery_rows(
    kpis: Iterable[Mapping[str, Any]], limit: int = MAX_DELIVERIES
) -> list[dict[str, Any]]:
    """Deliveries with messages pending first, then the most recently updated, at most
    ``limit``."""
    fields = ("delivery_id", "to_deliver", "sent", "failed", "pending", "success_pct")
    rows = [
        {**{f: k.get(f) for f in fields}, "event_time": k.get("event_time")}
        for k in kpis
        if isinstance(k.get("delivery_id"), str)
    ]

    def order(row: Mapping[str, Any]) -> tuple[bool, int, str]:
        pending = row["pending"] if isinstance(row["pending"], int) else 0
        t = row["event_time"] if isinstance(row["event_time"], int) else 0
        return (pending <= 0, -t, row["delivery_id"])

    return sorted(rows, key=order)[:limit]
