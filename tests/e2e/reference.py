"""Compare what the stream produced with what ``replay`` computes from the same events."""

from __future__ import annotations

from typing import Any

from streams.pipeline import records
from streams.runtime.config import Settings
from streams.testing.sample import Event
from streams.tools.replay import Replayer

from .helpers import collect

MESSAGE_FIELDS = ("status", "failure_type", "failure_reason", "attempts")
ADDRESS_FIELDS = ("state", "error_count")
KPI_FIELDS = ("to_deliver", "sent", "failed", "pending", "success_pct")
THROTTLE_FIELDS = tuple(f for f in records.THROTTLE_FIELDS if f != "key")


def reference(
    events: list[Event], partitions: int | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """type → key → final fields, from replay over ``events`` in order; with the workers'
    ``partitions``, also the newest throttle setting of every key that ever changed."""
    replayer = Replayer(partitions=partitions or Settings.partitions)
    outputs = []
    for family, event in events:
        decoded = replayer.codec.decode(family, replayer.codec.encode(family, event))
        outputs += replayer.apply(family, decoded)
    outputs += replayer.settle()
    out: dict[str, dict[str, dict[str, Any]]] = {"message": {}, "address": {}, "kpi": {}}
    if partitions is not None:
        out["throttle"] = {
            o.key: {f: o.value[f] for f in THROTTLE_FIELDS}
            for o in outputs
            if o.topic == "throttle"
        }
    for line in replayer.final_state():
        kind = line["type"]
        if kind == "message":
            out[kind][line["message_id"]] = {f: line[f] for f in MESSAGE_FIELDS}
        elif kind == "address":
            out[kind][line["address"]] = {f: line[f] for f in ADDRESS_FIELDS}
        elif kind == "kpi":
            out[kind][line["delivery_id"]] = {f: line[f] for f in KPI_FIELDS}
    return out


def _project(latest: dict[str, dict[str, Any]], fields: tuple[str, ...]) -> dict:
    projected = {}
    for key, record in latest.items():
        row = {f: record[f] for f in fields}
        if row.get("status") == "sent":
            row["failure_type"] = row["failure_reason"] = None
        projected[key] = row
    return projected


def stream_state(settings: Settings, ref: dict, timeout: float = 60.0) -> dict:
    """Newest status/address/KPI (and throttle setting, when ``ref`` has them) per key from
    the output topics, waiting for convergence."""
    got = {}
    for kind, topic, key_field, fields in (
        ("message", "status", "message_id", MESSAGE_FIELDS),
        ("address", "address", "address", ADDRESS_FIELDS),
        ("kpi", "kpi", "delivery_id", KPI_FIELDS),
        ("throttle", "throttle", "key", THROTTLE_FIELDS),
    ):
        if kind not in ref:
            continue
        latest = collect(
            settings,
            topic,
            lambda seen, kind=kind, fields=fields: _project(seen, fields) == ref[kind],
            key_field,
            timeout=timeout,
        )
        got[kind] = _project(latest, fields)
    return got


def diff(expected: dict, got: dict, limit: int = 10) -> list[str]:
    lines = []
    for kind in expected:
        exp, act = expected[kind], got.get(kind, {})
        for key in sorted(set(exp) | set(act)):
            if exp.get(key) != act.get(key):
                lines.append(f"{kind} {key}: expected {exp.get(key)}, got {act.get(key)}")
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])
