"""Hostile input for the KumoMTA adapter: whatever arrives, it returns results (events,
skips or bad records with a reason) and never raises, what it returns can always be
produced or dead-lettered, and ``site_seen`` never raises either."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.adapters.base import Bad, Event, Skip
from streams.adapters.kumomta import KumoMtaConverter, SiteSeen, site_seen
from streams.runtime.codec import Codec
from streams.runtime.vendor_records import to_record

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "vendors" / "kumomta"
LINES = (FIXTURES / "records.jsonl").read_text().splitlines()
RECORDS: list[dict[str, Any]] = [json.loads(line) for line in LINES]
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
# Where a value may be replaced: top-level fields and those of the nested objects.
PATHS = [(key,) for key in RECORDS[1]] + [
    ("response", "code"),
    ("response", "content"),
    ("response", "enhanced_code"),
    ("peer_address", "name"),
    ("feedback_report", "original_rcpto_to"),
    ("feedback_report", "supplemental_trace"),
]


def _check(results: list) -> None:
    """Results only, each one producible: an input event or a dead letter."""
    assert isinstance(results, list) and results
    for i, result in enumerate(results):
        assert isinstance(result, Event | Bad | Skip)
        if isinstance(result, Bad):
            assert result.reason and ":" in result.reason
        record = to_record(CODEC, result, "fuzz", i)
        assert (record is None) == isinstance(result, Skip)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300).filter(str.strip))
def test_any_text_gives_results_and_never_raises(text):
    _check(KumoMtaConverter().feed(text))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.sampled_from(["replace", "surrogateescape"]))
def test_random_bytes_decoded_as_text_never_raise(data, errors):
    text = data.decode("utf-8", errors)
    results = KumoMtaConverter().feed(text)
    if text.strip():
        _check(results)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_as_a_record_gives_results(value):
    for record in (value, {"type": "Delivery", "id": "x", "recipient": value}):
        results = KumoMtaConverter().convert_record(record)
        _check(results)
        assert site_seen(record) is None or isinstance(site_seen(record), SiteSeen)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(RECORDS),
    st.lists(st.tuples(st.sampled_from(PATHS), json_values | st.just(...)), max_size=4),
)
def test_mutated_records_give_results_and_the_same_ones_twice(record, edits):
    record = copy.deepcopy(record)
    for path, value in edits:
        target = record
        for key in path[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        if value is ...:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
    first = KumoMtaConverter().convert_record(record)
    _check(first)
    assert KumoMtaConverter().convert_record(copy.deepcopy(record)) == first
    site_seen(record)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(LINES), st.data())
def test_a_truncated_line_is_one_bad_record(line, data):
    cut = data.draw(st.integers(min_value=1, max_value=len(line) - 1))
    if line[:cut].strip():
        (result,) = KumoMtaConverter().feed(line[:cut])
        assert isinstance(result, Bad) and result.raw == line[:cut]
