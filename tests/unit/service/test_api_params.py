"""The operator API's pure parts: query parameters, quarantine paging bounds, CSV rows."""

from __future__ import annotations

import bisect
import csv
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.service import api_params as params
from streams.serving.views import index_member

LOCAL = st.text(alphabet="abcxyz0.-_+", min_size=1, max_size=6)
DOMAIN = st.sampled_from(["a.example", "a.example.org", "b.example", "a-example.com", "ab.example"])
ADDRESS = st.builds(lambda local, domain: f"{local}@{domain}", LOCAL, DOMAIN)


def zrangebylex(members: list[str], low: str, high: str, count: int) -> list[str]:
    """What Redis answers for ZRANGEBYLEX on members of equal score (sorted list)."""

    def above(m: str) -> bool:
        return low == "-" or (m >= low[1:] if low[0] == "[" else m > low[1:])

    def below(m: str) -> bool:
        return high == "+" or (m <= high[1:] if high[0] == "[" else m < high[1:])

    return [m for m in members if above(m) and below(m)][:count]


@given(st.integers(1, params.MAX_LIMIT))
def test_a_limit_in_range_is_taken(limit: int) -> None:
    assert params.parse_limit(str(limit)) == limit


@given(st.one_of(st.integers(max_value=0), st.integers(min_value=params.MAX_LIMIT + 1)))
def test_a_limit_out_of_range_is_refused(limit: int) -> None:
    with pytest.raises(params.ParamError, match="limit"):
        params.parse_limit(str(limit))


@pytest.mark.parametrize("raw", ["", "x", "1.5", " 5", "١٢", "+5"])
def test_a_limit_that_is_not_a_number_is_refused(raw: str) -> None:
    with pytest.raises(params.ParamError):
        params.parse_limit(raw)


def test_limit_and_states_have_defaults() -> None:
    assert params.parse_limit(None) == params.DEFAULT_LIMIT
    assert params.parse_states(None) == ("quarantined", "denylisted")
    with pytest.raises(params.ParamError):
        params.parse_states("valid")


@given(
    st.lists(ADDRESS, unique=True, max_size=60),
    st.lists(ADDRESS, max_size=10),
    st.one_of(st.none(), DOMAIN),
    st.integers(1, 7),
)
def test_paging_has_no_duplicate_and_no_gap_even_with_insertions(
    indexed: list[str], inserted: list[str], domain: str | None, limit: int
) -> None:
    members = sorted(index_member(a) for a in indexed)
    shown: list[str] = []
    cursor = None
    while True:
        low, high = params.lex_range(domain, cursor)
        page = zrangebylex(members, low, high, limit + 1)
        shown += [m.partition(" ")[2] for m in page[:limit]]
        if len(page) <= limit:
            break
        cursor = shown[-1]
        if inserted:  # one address added between pages
            bisect.insort(members, index_member(inserted.pop()))
            members = sorted(set(members))
    wanted = [a for a in indexed if domain is None or a.rpartition("@")[2] == domain]
    assert len(shown) == len(set(shown))
    assert set(wanted) <= set(shown)  # every address there from the start is shown
    assert all(domain is None or a.rpartition("@")[2] == domain for a in shown)
    assert [index_member(a) for a in shown] == sorted(index_member(a) for a in shown)


@given(st.lists(ADDRESS, unique=True, max_size=40), ADDRESS, DOMAIN)
def test_a_range_holds_the_domain_s_addresses_after_any_cursor(
    indexed: list[str], cursor: str, domain: str
) -> None:
    members = sorted(index_member(a) for a in indexed)
    low, high = params.lex_range(domain, cursor)
    assert zrangebylex(members, low, high, len(members)) == [
        m for m in members if m.partition(" ")[0] == domain and m > index_member(cursor)
    ]


@given(
    st.text(max_size=30),
    st.sampled_from(["quarantined", "denylisted"]),
    st.one_of(st.none(), st.text(max_size=50)),
    st.integers(0, 10**6),
    st.one_of(st.none(), st.integers(0, 2**62)),
)
def test_a_csv_row_reads_back_as_the_record(
    address: str, state: str, reason: str | None, errors: int, last: int | None
) -> None:
    record = {"address": address, "state": state, "reason": reason, "error_count": errors,
              "last_error_time": last, "event_time": 7, "version": 3}  # fmt: skip
    text = params.csv_header() + params.csv_row(record)
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert rows == [
        {
            "address": address,
            "state": state,
            "reason": reason or "",
            "error_count": str(errors),
            "last_error_time": "" if last is None else str(last),
            "updated_time": "7",
        }
    ]


@given(st.integers(0, 2**53))
def test_since_as_epoch_milliseconds(ms: int) -> None:
    assert params.parse_since(str(ms), now_ms=0, default_ms=0) == ms


def test_since_as_iso_time_defaults_to_utc() -> None:
    assert params.parse_since("2026-01-01T00:00:00Z", 0, 0) == 1_767_225_600_000
    assert params.parse_since("2026-01-01T00:00:00", 0, 0) == 1_767_225_600_000
    assert params.parse_since("2026-01-01T01:00:00+01:00", 0, 0) == 1_767_225_600_000
    assert params.parse_since(None, now_ms=5000, default_ms=1000) == 4000
    for raw in ("yesterday", "", "-5", "2026-13-01"):
        with pytest.raises(params.ParamError, match="since"):
            params.parse_since(raw, 0, 0)
