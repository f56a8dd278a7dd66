"""Hostile input for the SparkPost adapter: whatever arrives, it returns results (events,
skips or bad records with a reason) and never raises, and what it returns can always be
produced or dead-lettered."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.adapters.base import Bad, Event, Skip
from streams.adapters.sparkpost import SparkPostConverter
from streams.runtime.codec import Codec
from streams.runtime.vendor_records import to_record

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "vendors" / "sparkpost"
BATCH_TEXT = (FIXTURES / "batch.json").read_text()
ITEMS: list[dict[str, Any]] = json.loads(BATCH_TEXT) + json.loads(
    (FIXTURES / "batches.jsonl").read_text().splitlines()[1]
)
CODEC = Codec()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def _check(results: list) -> None:
    """Results only, each one producible: an input event or a dead letter."""
    assert isinstance(results, list)
    for i, result in enumerate(results):
        assert isinstance(result, Event | Bad | Skip)
        if isinstance(result, Bad):
            assert result.reason and ":" in result.reason
        record = to_record(CODEC, result, "fuzz", i)
        assert (record is None) == isinstance(result, Skip)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_gives_results_and_never_raises(text):
    results = SparkPostConverter().feed(text)
    _check(results)
    if text.strip():
        try:
            data = json.loads(text)
        except ValueError:
            assert len(results) == 1 and isinstance(results[0], Bad)
        else:
            if not isinstance(data, dict | list):
                assert len(results) == 1 and isinstance(results[0], Bad)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["replace", "surrogateescape", "ignore"]))
def test_random_bytes_decoded_as_text_never_raise(data, errors):
    _check(SparkPostConverter().feed(data.decode("utf-8", errors)))


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_as_an_item_gives_exactly_one_result(value):
    for item in (value, {"msys": value}, {"msys": {"message_event": value}}):
        results = SparkPostConverter().convert_item(item)
        assert len(results) == 1
        _check(results)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(ITEMS),
    st.lists(st.tuples(st.text(max_size=20), json_values | st.just(...)), min_size=1, max_size=4),
    st.data(),
)
def test_mutated_sample_items_give_one_result_and_the_same_one_twice(item, edits, data):
    item = copy.deepcopy(item)
    event = next(iter(item["msys"].values()), None) if isinstance(item.get("msys"), dict) else None
    for key, value in edits:
        if isinstance(event, dict) and event:
            key = data.draw(st.sampled_from([*event, key]))
            target = event
        else:
            target = item
        if value is ...:
            target.pop(key, None)
        else:
            target[key] = value
    first = SparkPostConverter().convert_item(item)
    assert len(first) == 1
    _check(first)
    assert SparkPostConverter().convert_item(copy.deepcopy(item)) == first


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(BATCH_TEXT)))
def test_a_truncated_batch_is_one_bad_record(cut):
    results = SparkPostConverter().feed(BATCH_TEXT[:cut])
    _check(results)
    if BATCH_TEXT[:cut].strip() and cut < len(BATCH_TEXT.rstrip()):
        assert len(results) == 1 and isinstance(results[0], Bad)
        assert results[0].reason.startswith("batch: not JSON")


def test_deep_nesting_inside_an_item_is_a_bad_record_not_a_crash():
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    item = {"msys": {"message_event": {"type": "delivery", "rcpt_to": deep}}}
    (result,) = SparkPostConverter().convert_item(item)
    assert isinstance(result, Bad)
    assert result.reason == "recipient: missing or not a string"
