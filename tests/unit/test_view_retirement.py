"""The pure parts of retirement: a tombstone read from a record's key and headers, the TTL
of each view record, and the latest state per key folded from records and tombstones."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from streams.runtime.config import Settings
from streams.serving.consumer import Record, fold_latest
from streams.serving.retirement import MARKER_TTL_S, TTL_MARGIN_S, Expiry, Tombstone, tombstone


def test_a_tombstone_reads_its_key_and_decimal_headers() -> None:
    headers = [("version", b"12"), ("event_time", b"1700000000123"), ("other", None)]
    assert tombstone(b"M1", headers) == Tombstone("M1", 12, 1_700_000_000_123)


@pytest.mark.parametrize(
    "headers",
    [
        None,
        [],
        [("version", None), ("event_time", b"")],
        [("version", b"x"), ("event_time", b"1e3")],
    ],
)
def test_missing_or_garbled_headers_are_absent(headers: list | None) -> None:
    assert tombstone(b"jane@example.org", headers) == Tombstone("jane@example.org")


def test_a_tombstone_without_a_key_is_none() -> None:
    assert tombstone(None, [("version", b"1")]) is None


def test_the_ttl_is_the_retention_plus_the_margin_for_final_records_only() -> None:
    settings = dataclasses.replace(Settings(), message_retention_s=100, address_retention_s=200)
    expiry = Expiry.from_settings(settings)
    assert expiry == Expiry(100 + TTL_MARGIN_S, 200 + TTL_MARGIN_S, MARKER_TTL_S)
    assert TTL_MARGIN_S == 86_400 and MARKER_TTL_S == 3_600
    ttl = expiry.ttl_s
    assert [ttl("msg", {"status": s}) for s in ("taken_into_account", "sent", "failed")] == [
        None,
        expiry.message_s,
        expiry.message_s,
    ]
    states = ("valid", "with_errors", "quarantined", "denylisted")
    assert [ttl("addr", {"state": s}) for s in states] == [expiry.address_s, None, None, None]
    for kind in ("kpi", "throttle", "reputation"):
        assert ttl(kind, {"status": "sent", "state": "valid"}) is None


def _record(key: str, value: dict[str, Any] | None) -> Record:
    return Record("t.status", 0, 0, key.encode(), value)


def test_fold_latest_keeps_the_newest_version_and_drops_a_retired_key() -> None:
    latest: dict[str, dict[str, Any]] = {}
    for version in (1, 3, 2):
        fold_latest(latest, _record("M1", {"message_id": "M1", "version": version}), "message_id")
    fold_latest(latest, _record("M2", {"message_id": "M2", "version": 1}), "message_id")
    assert latest["M1"]["version"] == 3
    fold_latest(latest, _record("M1", None), "message_id")
    assert set(latest) == {"M2"}
    # Reborn: its versions start again.
    fold_latest(latest, _record("M1", {"message_id": "M1", "version": 1}), "message_id")
    assert latest["M1"]["version"] == 1
    fold_latest(latest, Record("t.status", 0, 1, None, None), "message_id")
    assert set(latest) == {"M1", "M2"}
