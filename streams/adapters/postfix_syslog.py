"""Syslog lines of a mail log: timestamp, host, program and message.

Two timestamp forms are read: RFC 3339 (``2026-11-30T12:00:01.123456+00:00``, what
rsyslog writes with ``RSYSLOG_FileFormat`` and journald exports) and the classic BSD form
(``Nov 30 12:00:01``), which has no year and no zone. A classic timestamp is read as UTC;
its year is resolved by ``YearResolver``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from streams.adapters.base import AdapterError

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_TAIL = r" (?P<host>\S+) (?P<program>[^\s\[:]+)(?:\[(?P<pid>\d+)\])?: (?P<message>.*)"
_CLASSIC = re.compile(
    r"(?P<month>[A-Z][a-z]{2}) {1,2}(?P<day>\d{1,2}) (?P<hms>\d\d:\d\d:\d\d)"
    r"(?:\.(?P<frac>\d{1,6}))?" + _TAIL
)
_RFC3339 = re.compile(
    r"(?P<stamp>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?)" + _TAIL
)
# A year is chosen so that a timestamp is at most this far ahead of the reference.
_AHEAD = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class SyslogLine:
    time_ms: int
    host: str
    program: str  # "postfix/smtp", "postfix-out/smtp", "postfix/submission/smtpd", "sshd"
    message: str

    @property
    def postfix(self) -> bool:
        return self.program.split("/", 1)[0].startswith("postfix")

    @property
    def service(self) -> str:
        """The Postfix service: the last part of the program name ("smtp", "qmgr")."""
        return self.program.rsplit("/", 1)[-1]


class YearResolver:
    """Years for timestamps that have none.

    The first timestamp takes the latest year that puts it at most a day ahead of the
    reference (the current date by default). Each later one takes the year, among the
    previous timestamp's year and its neighbours, that puts it closest to the previous
    timestamp: time moves on across New Year (Dec 31 → Jan 1 is the next year), a line a
    little out of order stays in its year, and a gap of up to half a year is crossed.
    """

    def __init__(self, reference: datetime) -> None:
        self._reference = reference if reference.tzinfo else reference.replace(tzinfo=UTC)
        self._previous: datetime | None = None

    def resolve(self, month: int, day: int, hms: str, micro: int) -> datetime:
        hour, minute, second = (int(part) for part in hms.split(":"))
        if self._previous is None:
            years = range(self._reference.year, self._reference.year - 9, -1)
            limit = self._reference + _AHEAD
            found = (t for t in self._dates(years, month, day, hour, minute, second, micro))
            chosen = next((t for t in found if t <= limit), None)
        else:
            year = self._previous.year
            candidates = self._dates(
                (year - 1, year, year + 1), month, day, hour, minute, second, micro
            )
            previous = self._previous
            chosen = min(candidates, key=lambda t: abs(t - previous), default=None)
        if chosen is None:
            raise AdapterError(f"timestamp: no year has {month:02d}-{day:02d} {hms}")
        self._previous = chosen
        return chosen

    def observe(self, time: datetime) -> None:
        """A timestamp that carried its year: later year-less ones follow it."""
        self._previous = time

    @staticmethod
    def _dates(years: Iterable[int], *fields: int) -> list[datetime]:
        month, day, hour, minute, second, micro = fields
        dates = []
        for year in years:
            try:
                dates.append(datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC))
            except ValueError:  # Feb 29 of a common year, Apr 31, 25:00:00...
                continue
        return dates


def parse_syslog(text: str, years: YearResolver) -> SyslogLine | None:
    """A syslog line, or None when the text is not one; AdapterError for a timestamp that
    names no real time."""
    if m := _RFC3339.fullmatch(text):
        try:
            stamp = datetime.fromisoformat(m["stamp"])
        except ValueError:
            raise AdapterError(f"timestamp: not a real time: {m['stamp']!r}") from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        years.observe(stamp)
    elif (m := _CLASSIC.fullmatch(text)) and m["month"] in _MONTHS:
        micro = int((m["frac"] or "0").ljust(6, "0"))
        stamp = years.resolve(_MONTHS[m["month"]], int(m["day"]), m["hms"], micro)
    else:
        return None
    return SyslogLine(int(stamp.timestamp() * 1000), m["host"], m["program"], m["message"])
