"""The compact values of the messages and addresses tables: round trips, the format before
them (upgrade path), retired markers, corrupt bytes, and what a table holds per message."""

import tracemalloc

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.recipient.address_health import AddressState, Entry, Health
from streams.domain.recipient.message_status import ErrorFact, MessageState, MessageView
from streams.pipeline.table_values import (
    ADDRESSES,
    MESSAGES,
    RecordStore,
    Retired,
    Tracked,
    ValueFormatError,
)

times = st.integers(0, 2**62)
maybe_time = st.none() | times
text = st.text(max_size=40)
pairs = st.none() | st.tuples(times, text)
facts = st.none() | st.builds(
    ErrorFact,
    times,
    text,
    st.sampled_from(["hard", "soft", "ignored", "undefined"]),
    text,
    st.integers(0, 100),
    text,
)
message_states = st.builds(
    MessageState,
    message_id=text,
    delivery_id=text,
    first_seen=times,
    last_seen=times,
    validity_ms=st.integers(0, 10**9),
    validity_from=pairs,
    relayed_at=maybe_time,
    delivered_at=maybe_time,
    expired_at=maybe_time,
    complained_at=maybe_time,
    hard_sync=facts,
    hard_async=facts,
    last_error=facts,
    attempts=st.integers(0, 1000),
    last_deferral=pairs,
    next_attempt_time=maybe_time,
    errored=st.booleans(),
)
message_views = st.builds(
    MessageView,
    st.sampled_from(["taken_into_account", "sent", "failed"]),
    st.none() | st.sampled_from(["hard", "soft"]),
    st.none() | text,
    st.none() | st.integers(0, 100),
    st.none() | text,
    st.integers(0, 1000),
    maybe_time,
    st.booleans(),
    st.booleans(),
)
healths = st.builds(
    Health,
    st.sampled_from(["valid", "with_errors", "quarantined", "denylisted"]),
    st.integers(0, 100),
    st.none() | text,
    maybe_time,
    maybe_time,
    maybe_time,
    maybe_time,
    maybe_time,
    maybe_time,
    st.none() | text,
)
address_states = st.builds(
    AddressState,
    healths,
    pairs,
    st.lists(
        st.builds(
            Entry, times, text, st.sampled_from(["hard", "soft", "success"]), st.none() | text
        ),
        max_size=5,
    ).map(tuple),
    maybe_time,
    healths,
    maybe_time,
)
shown = st.fixed_dictionaries(
    {
        "state": st.sampled_from(["valid", "quarantined"]),
        "error_count": st.integers(0, 100),
        "reason": st.none() | text,
        "last_error_time": maybe_time,
    }
)
srcs = st.dictionaries(st.sampled_from(["send", "bounce", "retry", "clock", "operator"]), times)


def tracked(states, views):
    return st.builds(
        Tracked, states, views, st.integers(1, 2**40), srcs, st.integers(0, 1023), maybe_time
    )


def _old_format(rec: Tracked, view_dict: dict) -> bytes:
    """The JSON object the tables held before the compact format."""
    return orjson.dumps(
        {
            "s": rec.state.to_dict(),
            "view": view_dict,
            "v": rec.version,
            "src": rec.src,
            "p": rec.partition,
            "due": rec.due,
        }
    )


@settings(max_examples=300, deadline=None)
@given(tracked(message_states, message_views))
def test_a_message_record_round_trips_and_the_old_json_format_reads_the_same(rec):
    key = rec.state.message_id
    assert MESSAGES.decode(key, MESSAGES.encode(rec)) == rec
    assert MESSAGES.decode(key, _old_format(rec, rec.view.to_dict())) == rec
    assert MESSAGES.due_of(MESSAGES.encode(rec)) == (rec.partition, rec.due)


@settings(max_examples=300, deadline=None)
@given(tracked(address_states, shown))
def test_an_address_record_round_trips_and_the_old_json_format_reads_the_same(rec):
    assert ADDRESSES.decode("a@b.c", ADDRESSES.encode(rec)) == rec
    assert ADDRESSES.decode("a@b.c", _old_format(rec, rec.view)) == rec


@given(st.integers(0, 2**40), times, st.integers(0, 1023), times)
def test_a_retired_marker_round_trips_and_is_not_a_tracked_record(version, at, partition, due):
    marker = Retired(version, at, partition, due)
    store = RecordStore({"k": MESSAGES.encode(marker)}, MESSAGES)
    assert store["k"] == marker and store.get("k") == marker
    assert store.live("k") is None and list(store.tracked()) == []
    assert list(store.due_times()) == [("k", partition, due)]


@pytest.mark.parametrize("raw", [b"", b"\x07abcdefghijk", b"\x01\x00\x00" + b"\xc1" * 20])
def test_corrupt_values_raise_a_clear_error(raw):
    with pytest.raises(ValueFormatError):
        MESSAGES.decode("k", raw)


def test_a_tracked_message_is_a_few_hundred_bytes_in_memory():
    """The memory store holds these bytes: what a table costs per message, measured."""
    fact = ErrorFact(1_767_225_600_000, "M0-bounce-3600000", "soft", "Mailbox full", 22, "r12")
    recs = {}
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(20_000):
        mid = f"delivery-17-{i:08d}"
        state = MessageState(
            mid,
            "delivery-17",
            1_767_225_600_000,
            1_767_229_200_000,
            302_400_000,
            relayed_at=1_767_225_600_000,
            last_error=fact,
            attempts=2,
            last_deferral=(1_767_229_200_000, f"{mid}-retry"),
            next_attempt_time=1_767_232_800_000,
        )
        view = MessageView("taken_into_account", "soft", "Mailbox full", 22, "r12", 2)
        recs[mid] = MESSAGES.encode(
            Tracked(state, view, 3, {"send": i, "retry": i}, 3, 1_767_484_800_000)
        )
    per_message = (tracemalloc.get_traced_memory()[0] - before) / len(recs)
    tracemalloc.stop()
    print(f"messages table: {per_message:.0f} bytes per tracked message (keys included)")
    assert per_message < 400


@settings(max_examples=100, deadline=None)
@given(st.lists(tracked(message_states, message_views), min_size=1, max_size=6))
def test_the_scan_reads_each_header_as_due_of_does_in_every_format(recs):
    raw: dict = {}
    for i, rec in enumerate(recs):
        # Compact, retired, and the JSON format before them (as bytes and as a dict).
        raw[f"c{i}"] = MESSAGES.encode(rec)
        raw[f"r{i}"] = MESSAGES.encode(Retired(rec.version, 7, rec.partition, 2**40 + i))
        raw[f"j{i}"] = _old_format(rec, rec.view.to_dict())
        raw[f"d{i}"] = orjson.loads(raw[f"j{i}"])
    want = [(k, *MESSAGES.due_of(v)) for k, v in raw.items()]
    for lazy in (False, True):
        assert list(RecordStore(raw, MESSAGES, lazy).due_times()) == want


@settings(max_examples=50, deadline=None)
@given(tracked(message_states, message_views), tracked(message_states, message_views))
def test_a_record_read_back_after_a_write_equals_the_decoded_bytes(first, second):
    k = second.state.message_id = first.state.message_id  # a message's key is its id
    raw: dict = {}
    store = RecordStore(raw, MESSAGES)
    store[k] = first
    assert store[k] == first == MESSAGES.decode(k, raw[k])
    # A copy of the same bytes (a table read from disk) reads the same record.
    raw[k] = bytes(bytearray(raw[k]))
    assert store.get(k) == first
    # The table changed beneath the store (a changelog restore, another writer).
    raw[k] = MESSAGES.encode(second)
    assert store.get(k) == second and store.live(k) == second
    del store[k]
    assert store.get(k) is None and k not in store


def test_the_records_kept_decoded_are_bounded_and_the_oldest_go_first(monkeypatch):
    monkeypatch.setattr("streams.pipeline.table_values.RECENT", 3)

    def rec(key: str) -> Tracked:
        return Tracked(MessageState(key, "d", 1, 2, 3), MessageView("sent"), 1, {}, 0, None)

    store = RecordStore({}, MESSAGES)
    for key in "abcad":
        store[key] = rec(key)
    assert list(store._recent) == ["c", "a", "d"]
    assert all(store[k] == rec(k) for k in "abcd")
