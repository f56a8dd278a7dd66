"""Hostile input to the ``dsn`` adapter: random bytes and damaged copies of the fixtures
never raise, give only Event / Bad / Skip, and every event either fits the input schema or
becomes a dead letter with a reason (never an exception in the tools)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.adapters.base import Bad, Event, Result, Skip
from streams.adapters.dsn import DsnConverter
from streams.runtime.codec import Codec
from streams.runtime.vendor_records import to_record

FIXTURES = sorted((Path(__file__).parents[2] / "fixtures" / "vendors" / "dsn").glob("*.eml"))
TEXTS = [p.read_bytes() for p in FIXTURES]
CODEC = Codec()
CONVERTER = DsnConverter()


def check(results: list[Result]) -> None:
    assert results, "every message gives at least one result"
    for result in results:
        assert isinstance(result, Event | Bad | Skip)
        if isinstance(result, Bad):
            assert result.reason and ":" in result.reason  # "<kind>: <detail>"
        if isinstance(result, Event):
            assert result.family in ("bounce", "retry")
            # Encodable and either accepted or dead-lettered with a reason: never raises.
            record = to_record(CODEC, result, "dsn:fuzz", 1)
            assert record is not None and (record.error is None or record.error)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes(data):
    check(CONVERTER.feed(data.decode("utf-8", "surrogateescape")))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=2000))
def test_random_text_with_any_code_point(text):
    check(CONVERTER.feed(text))


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A fixture with a few spans deleted, replaced by random bytes or duplicated."""
    data = bytearray(draw(st.sampled_from(TEXTS)))
    for _ in range(draw(st.integers(1, 6))):
        start = draw(st.integers(0, len(data)))
        end = min(len(data), start + draw(st.integers(0, 200)))
        action = draw(st.sampled_from(["delete", "replace", "duplicate", "truncate"]))
        if action == "delete":
            del data[start:end]
        elif action == "replace":
            data[start:end] = draw(st.binary(max_size=60))
        elif action == "duplicate":
            data[start:start] = data[start:end]
        else:
            del data[start:]
    return bytes(data)


@settings(max_examples=500, deadline=None)
@given(damaged())
def test_damaged_fixtures(data):
    check(CONVERTER.feed(data.decode("utf-8", "surrogateescape")))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(TEXTS), st.sampled_from(["\r\n", "\r"]))
def test_other_line_endings_read_alike(data, newline):
    """A message saved with CRLF (or bare CR) line ends: never raises; CRLF reads the same."""
    text = data.decode("utf-8", "surrogateescape")
    results = CONVERTER.feed(text.replace("\n", newline))
    check(results)
    if newline == "\r\n":
        plain = CONVERTER.feed(text)
        assert [type(r) for r in results] == [type(r) for r in plain]
