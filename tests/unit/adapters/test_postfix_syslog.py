"""Syslog lines of a mail log: both timestamp forms and the years of year-less ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.adapters.base import AdapterError
from streams.adapters.postfix_syslog import YearResolver, parse_syslog

NOW = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)


def resolve(reference: datetime, *stamps: tuple[int, int, str]) -> list[datetime]:
    years = YearResolver(reference)
    return [years.resolve(month, day, hms, 0) for month, day, hms in stamps]


@pytest.mark.parametrize(
    ("stamp", "year"),
    [
        ((11, 30, "12:00:00"), 2026),
        ((12, 1, "15:59:59"), 2026),  # less than a day ahead of the reference
        ((12, 1, "16:00:01"), 2025),  # more than a day ahead: last year
        ((1, 15, "08:00:00"), 2026),
        ((2, 29, "08:00:00"), 2024),  # the latest leap year
    ],
)
def test_the_first_timestamp_is_the_latest_at_most_a_day_ahead_of_the_reference(stamp, year):
    assert resolve(NOW, stamp)[0].year == year


def test_later_timestamps_follow_the_previous_one():
    got = resolve(
        NOW,
        (12, 31, "23:59:59"),  # 2025
        (1, 1, "00:00:01"),  # New Year: 2026
        (12, 31, "23:59:58"),  # a line a little out of order stays in 2025
        (1, 2, "00:00:00"),  # 2026 again
        (4, 2, "00:00:00"),  # a three-month gap, forward
    )
    assert [t.isoformat() for t in got] == [
        "2025-12-31T23:59:59+00:00",
        "2026-01-01T00:00:01+00:00",
        "2025-12-31T23:59:58+00:00",
        "2026-01-02T00:00:00+00:00",
        "2026-04-02T00:00:00+00:00",
    ]


def test_a_long_follow_moves_past_the_reference():
    # A converter started on Nov 30 still reads December's lines as this year's.
    got = resolve(
        NOW, (11, 30, "17:00:00"), (12, 5, "09:00:00"), (12, 31, "23:00:00"), (1, 3, "01:00:00")
    )
    assert [t.date().isoformat() for t in got] == [
        "2026-11-30",
        "2026-12-05",
        "2026-12-31",
        "2027-01-03",
    ]


def test_a_date_that_no_year_has_is_an_error():
    with pytest.raises(AdapterError, match="no year has 02-30"):
        resolve(NOW, (2, 30, "10:00:00"))


def test_classic_and_rfc3339_lines():
    years = YearResolver(NOW)
    classic = parse_syslog("Nov  3 07:08:09 mx1 postfix/smtp[42]: 1A2B3C: to=<a@b.example>", years)
    assert classic is not None
    assert (classic.time_ms, classic.host, classic.program, classic.service, classic.postfix) == (
        int(datetime(2026, 11, 3, 7, 8, 9, tzinfo=UTC).timestamp() * 1000),
        "mx1",
        "postfix/smtp",
        "smtp",
        True,
    )
    assert classic.message == "1A2B3C: to=<a@b.example>"
    modern = parse_syslog("2026-11-29T09:00:01.5+01:00 mx2 postfix/submission/smtpd[7]: x", years)
    assert modern is not None
    assert (modern.time_ms, modern.service) == (
        int(datetime(2026, 11, 29, 8, 0, 1, 500_000, tzinfo=UTC).timestamp() * 1000),
        "smtpd",
    )
    journal = parse_syslog("2026-11-29T08:00:01+0000 mx2 postfix/qmgr[9]: x", years)
    assert journal is not None  # journalctl -o short-iso
    assert journal.time_ms == int(datetime(2026, 11, 29, 8, 0, 1, tzinfo=UTC).timestamp() * 1000)
    other = parse_syslog("Nov 29 09:00:00 mx1 dovecot: imap-login: Login", years)
    assert other is not None and not other.postfix
    assert parse_syslog("not a syslog line", years) is None
    with pytest.raises(AdapterError, match="not a real time"):
        parse_syslog("2026-13-01T00:00:00Z mx1 postfix/smtp[1]: x", years)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 12), st.integers(1, 31), st.integers(0, 23), st.integers(0, 59)),
        max_size=20,
    )
)
def test_resolved_times_never_leave_a_year_around_the_previous_one(stamps):
    years = YearResolver(NOW)
    previous: datetime | None = None
    for month, day, hour, minute in stamps:
        try:
            got = years.resolve(month, day, f"{hour:02d}:{minute:02d}:00", 0)
        except AdapterError:
            continue  # Apr 31, Feb 30...
        if previous is None:
            assert got <= NOW + timedelta(days=1)
        elif (month, day) != (2, 29):  # only leap years have it, whatever the distance
            assert abs(got - previous) <= timedelta(days=184)
        previous = got
