"""The PostgreSQL sink's pure part: records → rows, the version rule, and a batch folded
per key that leaves the tables as the records applied one by one would."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.pipeline.records import address_record, kpi_record, status_record
from streams.runtime.config import ConfigError
from streams.serving.pg_config import PG_VARS, PgSettings, mask_dsn
from streams.serving.pg_rows import (
    ADDRESS_COLUMNS,
    KPI_COLUMNS,
    STATUS_COLUMNS,
    BadRecord,
    Batch,
    applies,
    deletes,
    parse_duration,
    to_row,
)


def _status(mid: str = "M1", version: int = 3) -> dict[str, Any]:
    from streams.domain.recipient.message_status import MessageView

    view = MessageView("failed", "hard", "User unknown", 10, "r1", 2, None)
    return status_record(mid, "D1", view, version, 1_767_225_600_000).value


def test_a_status_record_becomes_a_delivery_log_row():
    row = dict(zip(STATUS_COLUMNS, to_row("status", _status()), strict=True))
    assert row["message_id"] == "M1"
    assert row["delivery_id"] == "D1"
    assert row["recipient"] is None
    assert (row["status"], row["failure_type"], row["failure_reason"]) == (
        "failed",
        "hard",
        "User unknown",
    )
    assert (row["attempts"], row["event_ms"], row["version"]) == (2, 1_767_225_600_000, 3)


def test_an_address_and_a_kpi_record_become_rows():
    shown = {"state": "quarantined", "error_count": 3, "reason": "Mailbox full"}
    shown["last_error_time"] = 5
    value = address_record("a@example.org", shown, 7, 9).value
    row = dict(zip(ADDRESS_COLUMNS, to_row("address", value), strict=True))
    assert row == {
        "address": "a@example.org",
        "state": "quarantined",
        "error_count": 3,
        "reason": "Mailbox full",
        "last_error_ms": 5,
        "event_ms": 9,
        "version": 7,
    }
    from streams.domain.recipient.delivery_kpi import KpiCounts

    counts = KpiCounts(to_deliver=4, sent=3, taken_into_account=1)
    row = dict(zip(KPI_COLUMNS, to_row("kpi", kpi_record("D1", counts, 2, 9)), strict=True))
    assert (row["delivery_id"], row["to_deliver"], row["sent"], row["version"]) == ("D1", 4, 3, 2)
    assert row["success_pct"] == 75.0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"version": None}, "status record without version"),
        ({"message_id": None}, "status record without message_id"),
        ({"attempts": "2"}, "attempts is not an integer"),
        ({"version": True}, "version is not an integer"),
        ({"event_time": 2**62}, "event_time 4611686018427387904 is out of range"),
        ({"attempts": 2**31}, "attempts 2147483648 is out of range"),
        ({"rule": "r\x001"}, "rule contains a NUL character"),
    ],
)
def test_a_record_missing_a_field_is_refused_with_the_reason(change, reason):
    with pytest.raises(BadRecord, match=reason):
        to_row("status", {**_status(), **change})


def test_a_topic_the_sink_does_not_read_is_refused():
    with pytest.raises(BadRecord, match="does not read 'throttle'"):
        to_row("throttle", {})


def test_the_version_rule():
    assert applies(None, 0)
    assert applies(3, 3)  # the same state published again
    assert applies(3, 4)
    assert not applies(4, 3)
    assert deletes(3, 3)
    assert deletes(3, None)
    assert not deletes(4, 3)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90d", 7_776_000), ("12h", 43_200), ("30m", 1800), ("45", 45)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "-1d", "0", "soon", "infh"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


# --- a batch folded per key equals its records applied one by one -----------------------

KEYS = st.sampled_from(["a", "b", "c"])
VERSIONS = st.integers(0, 6)
# ("up", key, version, payload) or ("gone", key, version or None)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("up"), KEYS, VERSIONS, st.integers(0, 3)),
        st.tuples(st.just("gone"), KEYS, st.one_of(st.none(), VERSIONS)),
    ),
    max_size=12,
)
TABLE = st.dictionaries(KEYS, st.tuples(VERSIONS, st.integers(0, 3)))


def _row(key: str, version: int, payload: int) -> tuple[Any, ...]:
    return (key, payload, version)


def _one_by_one(table: dict, ops: list) -> dict:
    """The database's rules applied to each record in turn (the specification)."""
    table = dict(table)
    for op in ops:
        key = op[1]
        stored = table.get(key)
        if op[0] == "up":
            if applies(None if stored is None else stored[0], op[2]):
                table[key] = (op[2], op[3])
        elif stored is not None and deletes(stored[0], op[2]):
            del table[key]
    return table


def _as_the_sink_writes(table: dict, batch: Batch) -> dict:
    """What the sink's transaction does: every delete, then every upsert, each guarded."""
    table = dict(table)
    for key, version in batch.address_deletes():
        if key in table and deletes(table[key][0], version):
            del table[key]
    for key, payload, version in batch.upserts("address"):
        stored = table.get(key)
        if applies(None if stored is None else stored[0], version):
            table[key] = (version, payload)
    return table


@given(TABLE, OPS)
def test_a_folded_batch_leaves_the_table_as_its_records_one_by_one(table, ops):
    batch = _fold(ops)
    assert _as_the_sink_writes(table, batch) == _one_by_one(table, ops)
    assert len(batch.upserts("address")) <= 3


def _fold(ops: list) -> Batch:
    batch = Batch()
    for op in ops:
        if op[0] == "up":
            batch.upsert("address", _row(op[1], op[2], op[3]))
        else:
            batch.tombstone("address", op[1], op[2])
    return batch


@given(TABLE, OPS, OPS)
def test_batches_split_anywhere_and_written_twice_change_nothing(table, first, second):
    """A batch written again (its commit lost with the connection) or records split into
    other batches (a restart) leave the same table."""
    whole = _one_by_one(table, first + second)
    once = _as_the_sink_writes(_as_the_sink_writes(table, _fold(first)), _fold(second))
    assert once == whole
    twice = _as_the_sink_writes(_as_the_sink_writes(table, _fold(first)), _fold(first))
    assert _as_the_sink_writes(twice, _fold(second)) == whole


def test_status_tombstones_leave_the_delivery_log():
    batch = Batch()
    batch.upsert("status", to_row("status", _status("M1", 2)))
    batch.tombstone("status", "M1", 2)
    assert [row[0] for row in batch.upserts("status")] == ["M1"]
    assert batch.address_deletes() == []


def test_offsets_are_the_next_to_read_per_partition():
    batch = Batch()
    for offset in (4, 5, 9):
        batch.seen("t.status", 1, offset)
    batch.seen("t.kpi", 0, 0)
    assert batch.offsets == {("t.status", 1): 10, ("t.kpi", 0): 1}
    assert batch.records == 4


# --- settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://sink:s3cret@db:5432/campaign", "postgresql://sink:****@db:5432/campaign"),
        ("postgresql://db/campaign?password=s3cret", "postgresql://db/campaign?password=****"),
        ("host=db password=s3cret dbname=campaign", "host=db password=**** dbname=campaign"),
        ("host=db password = 'a b\\'c' dbname=c", "host=db password = **** dbname=c"),
        ("host=db dbname=campaign", "host=db dbname=campaign"),
    ],
)
def test_the_dsn_password_never_shows(dsn, shown):
    assert mask_dsn(dsn) == shown
    rows = {env: value for env, value, _ in PgSettings(dsn=dsn).describe()}
    assert rows["MTA_POSTGRES_DSN"] == shown


def test_postgres_settings_come_from_their_variables():
    pg = PgSettings.from_env({"MTA_POSTGRES_BATCH_ROWS": "500", "MTA_POSTGRES_GROUP": ""})
    assert (pg.batch_rows, pg.group_id("app")) == (500, "app.sink-postgres")
    assert {env for env, _, _ in pg.describe()} == PG_VARS
    with pytest.raises(ConfigError, match=r"MTA_POSTGRES_BATCH_ROWS='0': must be between"):
        PgSettings.from_env({"MTA_POSTGRES_BATCH_ROWS": "0"})
    with pytest.raises(ConfigError, match="must not be empty"):
        PgSettings.from_env({"MTA_POSTGRES_DSN": "  "})
