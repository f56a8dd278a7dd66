"""Request bodies → records at their indexes; unreadable content becomes Bad, never an
exception."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from streams.adapters.base import MAX_RAW_CHARS, Bad
from streams.service.bodies import kumo_records, sparkpost_batch

PING = b'[{"msys":{}}]'


def test_a_sparkpost_batch_is_its_elements_in_order():
    assert sparkpost_batch(PING) == [{"msys": {}}]
    batch = [{"msys": {"message_event": {"n": i}}} for i in range(3)] + [7, None]
    assert sparkpost_batch(json.dumps(batch).encode()) == batch
    assert sparkpost_batch(b"[]") == []
    # A single object is a batch of one.
    assert sparkpost_batch(b'{"msys": {}}') == [{"msys": {}}]


def test_a_body_that_is_not_json_is_one_bad_record_with_its_text():
    for body, words in (
        (b"", "empty"),
        (b"  \n", "empty"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"<html>oops</html>", "not JSON"),
        (b"[1, 2", "not JSON"),
        (b'"a string"', "not a JSON array"),
        (b"42", "not a JSON array"),
    ):
        (only,) = sparkpost_batch(body)
        assert isinstance(only, Bad), body
        assert words in only.reason, (body, only.reason)
        assert only.raw == body.decode("utf-8", "replace")


def test_values_beyond_strict_json_parse_as_the_standard_library_parses_them():
    assert sparkpost_batch(b"[NaN]")[0] != sparkpost_batch(b"[NaN]")[0]  # a float NaN
    assert sparkpost_batch(b"[123456789012345678901234567890]") == [123456789012345678901234567890]
    assert sparkpost_batch(b'["\\ud800"]') == ["\ud800"]


def test_deep_nesting_and_huge_bodies_are_bad_records_not_crashes():
    (deep,) = sparkpost_batch(b"[" * 200_000 + b"]" * 200_000)
    assert isinstance(deep, Bad)
    (huge,) = kumo_records(b"x" * 1_000_000)
    assert isinstance(huge, Bad) and len(huge.raw) == MAX_RAW_CHARS


def test_kumo_records_are_an_object_an_array_or_json_lines():
    one = {"type": "Delivery", "id": "a"}
    assert kumo_records(json.dumps(one).encode()) == [one]
    assert kumo_records(json.dumps(one, indent=2).encode()) == [one]
    assert kumo_records(json.dumps([one, one]).encode()) == [one, one]
    lines = b'{"id": 1}\n\n{"id": 2}\r\nnot json\n[3]\n'
    got = kumo_records(lines)
    assert got[:2] == [{"id": 1}, {"id": 2}]
    assert isinstance(got[2], Bad) and got[2].raw == "not json"
    assert got[3] == [3]  # not an object: the route makes it a bad record
    assert len(got) == 4


def test_a_broken_kumo_array_is_one_bad_record():
    (only,) = kumo_records(b'[{"id": 1},\n{"id": 2\n]')
    assert isinstance(only, Bad) and "not JSON" in only.reason
    (scalar,) = kumo_records(b"true")
    assert isinstance(scalar, Bad) and "not a JSON object" in scalar.reason


def test_a_json_string_may_hold_a_unicode_line_separator():
    line = json.dumps({"id": "a\u2028b"}, ensure_ascii=False).encode()
    assert kumo_records(line + b"\n" + line) == [{"id": "a\u2028b"}] * 2


@given(st.binary(max_size=2000))
def test_any_bytes_give_records_or_bad_records(body):
    for parse in (sparkpost_batch, kumo_records):
        got = parse(body)
        assert isinstance(got, list)
        for element in got:
            if isinstance(element, Bad):
                assert element.reason and len(element.raw) <= MAX_RAW_CHARS


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=30,
    )
)
def test_any_json_value_gives_records_or_one_bad_record(value):
    body = json.dumps(value).encode()
    got = sparkpost_batch(body)
    if isinstance(value, list):
        assert got == value
    elif isinstance(value, dict):
        assert got == [value]
    else:
        assert len(got) == 1 and isinstance(got[0], Bad)
