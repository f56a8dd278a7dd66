"""The PostgreSQL sink's pure part: records → rows, the version rule, and a batch folded
per key that leaves the tables as the records applied one by one would."""

from __future__ import annotations

from typing import Any

import pytest
from factories import JAN_2026, event
from hypothesis import given
from hypothesis import strategies as st

from streams.domain.bounce.qualifier import default_qualifier
from streams.pipeline.feedback import FeedbackProcessor, PipelineConfig
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
    return status_record(mid, "D1", view, version, 1_767_225_600_000, "jane@example.com").value


def test_a_status_record_becomes_a_delivery_log_row():
    row = dict(zip(STATUS_COLUMNS, to_row("status", _status()), strict=True))
    assert row["message_id"] == "M1"
    assert row["delivery_id"] == "D1"
    assert row["recipient"] == "jane@example.com"
    assert to_row("status", {**_status(), "recipient": None})[2] is None  # a tick's change
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
# The address table and the remembered tombstones: a key is in one of them at most.
State = tuple[dict[str, tuple[int, int]], dict[str, int]]
STATE = st.dictionaries(KEYS, st.one_of(st.tuples(VERSIONS, st.integers(0, 3)), VERSIONS)).map(
    lambda d: (
        {k: v for k, v in d.items() if isinstance(v, tuple)},
        {k: v for k, v in d.items() if isinstance(v, int)},
    )
)


def _row(key: str, version: int, payload: int) -> tuple[Any, ...]:
    return (key, payload, version)


def _one_by_one(state: State, ops: list) -> State:
    """The database's rules applied to each record in turn (the specification)."""
    table, gone = dict(state[0]), dict(state[1])
    for op in ops:
        key, version = op[1], op[2]
        stored = table.get(key)
        if op[0] == "up":
            if key in gone and version <= gone[key]:
                continue  # a late record of the retired life
            if applies(None if stored is None else stored[0], version):
                table[key] = (version, op[3])
                gone.pop(key, None)
            continue
        if stored is not None and not deletes(stored[0], version):
            continue  # the row is newer: reborn already
        table.pop(key, None)
        if version is None:
            gone.pop(key, None)  # nothing to guard with
        else:
            gone[key] = max(gone.get(key, version), version)
    return table, gone


def _as_the_sink_writes(state: State, batch: Batch) -> State:
    """What the sink's transaction does: every delete with what it remembers, then every
    upsert, each guarded (the statements of streams/serving/pg_sink.py)."""
    table, gone = dict(state[0]), dict(state[1])
    for key, g in batch.address_deletes():
        if key in table and deletes(table[key][0], g.bound):
            del table[key]
        if g.forget:
            gone.pop(key, None)
        if g.remember is not None and key not in table:
            gone[key] = max(gone.get(key, g.remember), g.remember)
    for key, payload, version in batch.upserts("address"):
        if key in gone and version <= gone[key]:
            continue
        stored = table.get(key)
        if applies(None if stored is None else stored[0], version):
            table[key] = (version, payload)
            gone.pop(key, None)
    return table, gone


def _fold(ops: list) -> list[Batch]:
    """The records as the sink batches them: one batch, split where it must be."""
    batches = [Batch()]
    for op in ops:
        if op[0] == "up":
            batches[-1].upsert("address", _row(op[1], op[2], op[3]))
            continue
        if batches[-1].splits_at("address", op[1], op[2]):
            batches.append(Batch())
        batches[-1].tombstone("address", op[1], op[2])
    return batches


def _write(state: State, batches: list[Batch]) -> State:
    for batch in batches:
        state = _as_the_sink_writes(state, batch)
    return state


@given(STATE, OPS)
def test_a_folded_batch_leaves_the_table_as_its_records_one_by_one(state, ops):
    batches = _fold(ops)
    assert _write(state, batches) == _one_by_one(state, ops)
    assert all(len(batch.upserts("address")) <= 3 for batch in batches)
    # Only a tombstone without a version after an upsert of its key splits a batch.
    assert len(batches) <= 1 + sum(1 for op in ops if op[0] == "gone" and op[2] is None)


@given(STATE, OPS, OPS)
def test_batches_split_anywhere_and_written_twice_change_nothing(state, first, second):
    """A batch written again (its commit lost with the connection) or records split into
    other batches (a restart) leave the same table."""
    whole = _one_by_one(state, first + second)
    once = _write(_write(state, _fold(first)), _fold(second))
    assert once == whole
    twice = _write(_write(state, _fold(first)), _fold(first))
    assert _write(twice, _fold(second)) == whole


def test_a_late_record_of_a_retired_address_stays_out():
    batches = _fold([("up", "a", 3, 1), ("gone", "a", 3)])
    state = _write(({}, {}), batches)
    assert state == ({}, {"a": 3})
    late = _fold([("up", "a", 2, 0), ("up", "a", 3, 1)])
    assert _write(state, late) == state
    reborn = _fold([("up", "a", 4, 2)])
    assert _write(state, reborn) == ({"a": (4, 2)}, {})


def test_a_tombstone_without_a_version_after_an_upsert_starts_a_new_batch():
    batches = _fold([("up", "a", 1, 0), ("gone", "b", None), ("gone", "a", None)])
    assert [len(b.upserts("address")) for b in batches] == [1, 0]
    assert [list(b.deleted) for b in batches] == [["b"], ["a"]]


# ("up", key, version, recipient or None): a status record; the spec keeps a row's
# recipient when a newer record has none.
STATUS_OPS = st.lists(
    st.tuples(KEYS, VERSIONS, st.one_of(st.none(), st.sampled_from(["x@a.example", "y@b"]))),
    max_size=10,
)


@given(STATUS_OPS)
def test_a_folded_batch_keeps_each_messages_recipient(ops):
    expected: dict[str, tuple[int, str | None]] = {}
    for key, version, recipient in ops:
        stored = expected.get(key)
        if applies(None if stored is None else stored[0], version):
            expected[key] = (version, recipient or (stored[1] if stored else None))
    batch = Batch()
    for key, version, recipient in ops:
        batch.upsert("status", (key, "D1", recipient, "sent", version))
    assert {row[0]: (row[-1], row[2]) for row in batch.upserts("status")} == expected


def test_the_delivery_log_keeps_the_recipient_of_the_events_through_an_expiry():
    """The workers' status records carry the recipient of the event that made the change
    (not kept in the message's state) and none after an expiry; the row keeps it."""
    messages: dict[str, Any] = {}
    fp = FeedbackProcessor(messages, {}, {}, default_qualifier(), PipelineConfig())
    sent = fp.process("send", event("M1", "relayed", 0, validity_seconds=3600), 0, 1)
    again = fp.process("send", event("M1", "relayed", 0, validity_seconds=3600), 0, 1)
    expired = fp.tick(JAN_2026 + 3_600_001, 0, 2)
    records = [o.value for o in sent + again + expired if o.topic == "status"]
    recipients = [(r["version"], r["recipient"]) for r in records]
    assert recipients == [(1, "m1@example.org"), (1, "m1@example.org"), (2, None)]
    assert "m1@example.org" not in repr(messages)
    batch = Batch()
    for record in records:
        batch.upsert("status", to_row("status", record))
    [row] = batch.upserts("status")
    assert (row[STATUS_COLUMNS.index("status")], row[2]) == ("failed", "m1@example.org")


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
