"""PowerMTA accounting files → input events (``--from pmta``).

An accounting file is RFC 4180 CSV whose first line names the columns; ``record-fields``
chooses them and their order, so every row is read by the names of the latest header line
(a header line can appear again mid-stream after a restart or a rotation). One row is one
recipient of one message. What each record type becomes, and why: docs/adapters/pmta.md.

- ``d`` → send/delivered; ``t`` → retry/deferred with the reply; ``b`` with a 5xx → bounce/sync;
  ``b`` with a 4xx (PowerMTA gave up after retries) → retry/expired carrying the last reply;
  ``rb`` (a DSN received later) → bounce/async; ``f`` (feedback loop) → bounce/complaint;
  ``tq``, ``r`` and ``rs`` are skipped and counted.
- PowerMTA logs no relay record by default, so the first record of a message seen by a
  converter implies one (send/relayed at ``timeQueued``), with an id derived from the
  message so that a second converter reading the same message does not count it twice.
- A failure with no reply code that is a connection failure (``no-answer-from-host``,
  ``bad-connection`` or a connection error text) is an outage: origin ``connection``.
"""

from __future__ import annotations

import csv
import re
from datetime import UTC, datetime
from typing import Any

from streams.adapters.base import (
    CONNECTION,
    MAX_RAW_CHARS,
    AdapterError,
    Converter,
    Event,
    Result,
    Skip,
    bad,
    message_key,
    normalise_recipient,
    stable_id,
)

VENDOR = "pmta"
# Messages whose implied relay was emitted, remembered with their delivery id; the oldest
# are forgotten past this many (a forgotten message's relay comes again with the same id).
MAX_MESSAGES = 1_000_000
# A record whose quoted field spans lines is held until it closes, up to this many lines.
MAX_CONTINUATION_LINES = 100

_SKIPPED = {"tq": "transient-queue", "r": "received", "rs": "remote-status"}
_CONVERTED = {"d", "t", "b", "f", "rb"}
_CONNECTION_CATEGORIES = {"no-answer-from-host", "bad-connection"}
_CONNECTION_TEXT = re.compile(
    r"timed? ?out|connection (?:refused|reset|closed|lost)|no route to host|network is"
    r" unreachable|unable to connect|could not connect|no answer from host",
    re.IGNORECASE,
)
# A reply starts with its code, maybe followed by an enhanced status: "452 4.2.2 Mailbox full".
_REPLY = re.compile(r"(?P<code>[245]\d\d)(?:[ -]+(?P<status>[245]\.\d{1,3}\.\d{1,3})(?![\d.]))?")
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?![\d.])")
# The RFC 3464 types before a diagnostic ("smtp;550 5.1.1 ...") and an MTA ("dns; mx...").
_DIAG_TYPE = re.compile(r"^(?:smtp|x-[\w.-]+)\s*;\s*", re.IGNORECASE)
_MTA_TYPE = re.compile(r"^(?:dns|x-[\w.-]+)\s*;\s*", re.IGNORECASE)
_UNIX_TIME = re.compile(r"\d{1,12}(?:\.\d+)?")


def parse_time(value: str, name: str) -> int:
    """A time field (Unix time_t, or ISO 8601 with ``iso-times yes``) → epoch ms; an ISO
    time without an offset is UTC."""
    text = value.strip()
    if _UNIX_TIME.fullmatch(text):
        return round(float(text) * 1000)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise AdapterError(f"time: {name} {text[:40]!r} is not a Unix or ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def parse_reply(diag: str, dsn_status: str) -> tuple[int | None, str | None, str | None]:
    """``dsnDiag`` and ``dsnStatus`` → (reply code, enhanced status, reply text). The status
    comes from the reply when it has one, else from ``dsnStatus`` ("5.1.1 (bad ...)")."""
    text = _DIAG_TYPE.sub("", diag.strip(), count=1).strip() or None
    code = status = None
    if text and (m := _REPLY.match(text)):
        code, status = int(m["code"]), m["status"]
    if status is None and (s := _STATUS.match(dsn_status.strip())):
        status = s[0]
    return code, status, text


def mta_host(value: str) -> str | None:
    """``dsnMta`` → the host name: "mx.example.com (192.0.2.1)" or "dns; mx.example.com"."""
    text = _MTA_TYPE.sub("", value.strip(), count=1)
    return text.split(maxsplit=1)[0] if text.strip() else None


def _starts_record(line: str) -> bool:
    """A line that is a whole record or header of its own, not the rest of a quoted field:
    balanced quotes (the line closing a field has an odd number) and a record type first."""
    first = line.split(",", 1)[0].lstrip("\ufeff").strip().lower()
    known = first == "type" or first in _CONVERTED or first in _SKIPPED
    return known and "," in line and line.count('"') % 2 == 0


def _strip_brackets(value: str) -> str:
    text = value.strip()
    return text[1:-1].strip() if text.startswith("<") and text.endswith(">") else text


class PmtaConverter(Converter):
    """One accounting file (or one ``acct-file`` pipe) at a time, line by line."""

    name = VENDOR

    def __init__(self, max_messages: int = MAX_MESSAGES) -> None:
        self._header: list[str] | None = None
        self._held: list[str] = []  # lines of a record whose quoted field is still open
        self._messages: dict[str, str] = {}  # message key → delivery id, oldest first
        self._max_messages = max_messages

    def feed(self, text: str) -> list[Result]:
        line = text.rstrip("\r\n")
        if self._held and _starts_record(line):
            # The held record never closed its quote: it is bad, this line is not part of it.
            return [*self.finish(), *self.feed(line)]
        line = "\n".join([*self._held, line])
        self._held = []
        if not line.strip():
            return []
        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error as exc:
            # An odd number of quotes that does not parse: a quoted field goes on.
            odd = line.count('"') % 2
            if odd and line.count("\n") < MAX_CONTINUATION_LINES and len(line) <= MAX_RAW_CHARS:
                self._held = line.split("\n")
                return []
            return [bad(line, f"not CSV: {exc}")]
        fields[0] = fields[0].lstrip("\ufeff")  # a byte order mark before the header
        if fields[0].strip() == "type":
            self._header = [f.strip().lower() for f in fields]
            return []
        if self._header is None:
            return [bad(line, "no header line: the file must start with PowerMTA's header")]
        if len(fields) != len(self._header):
            reason = f"column count: {len(fields)} fields, the header has {len(self._header)}"
            return [bad(line, reason)]
        try:
            return self._convert(dict(zip(self._header, fields, strict=True)), line)
        except AdapterError as exc:
            return [bad(line, str(exc))]

    def finish(self) -> list[Result]:
        held, self._held = "\n".join(self._held), []
        return [bad(held, "unterminated quoted field: no closing quote")] if held else []

    def _convert(self, row: dict[str, str], line: str) -> list[Result]:
        kind = row["type"].strip().lower()
        if kind in _SKIPPED:
            return [Skip(_SKIPPED[kind])]
        if kind not in _CONVERTED:
            raise AdapterError(f"record type: unknown {kind[:20]!r}")
        recipient = normalise_recipient(row.get("rcpt"))
        logged = row.get("timelogged", "").strip()
        queued = row.get("timequeued", "").strip()
        if not (logged or queued):
            raise AdapterError("time: the record has no timeLogged or timeQueued")
        event_time = (
            parse_time(logged, "timeLogged") if logged else parse_time(queued, "timeQueued")
        )
        key = message_key(_message_id(row), recipient, shared=True)
        results: list[Result] = []
        delivery_id = self._messages.get(key)
        if delivery_id is None:
            delivery_id = row.get("jobid", "").strip() or VENDOR
            results.append(self._relayed(row, key, delivery_id, recipient, event_time))
        family, fields = _meaning(kind, row)
        event = {
            "event_id": stable_id(VENDOR, line),  # the record itself
            "event_time": event_time,
            "delivery_id": delivery_id,
            "message_id": key,
            "recipient": recipient,
            **fields,
        }
        results.append(Event(family, event))
        return results

    def _relayed(
        self, row: dict[str, str], key: str, delivery_id: str, recipient: str, time: int
    ) -> Event:
        queued = row.get("timequeued", "").strip()
        event = {
            "event_id": stable_id(VENDOR, "relayed", key),
            "event_time": parse_time(queued, "timeQueued") if queued else time,
            "delivery_id": delivery_id,
            "message_id": key,
            "recipient": recipient,
            "kind": "relayed",
        }
        # Remembered once the record is known to be good.
        self._messages[key] = delivery_id
        if len(self._messages) > self._max_messages:
            del self._messages[next(iter(self._messages))]
        return Event("send", event)


def _message_id(row: dict[str, str]) -> str:
    """The logged Message-ID header, else envId, else jobId (each covers several recipients),
    else the queue time and sender, which together name one message."""
    for name in ("header_message-id", "envid", "jobid"):
        value = _strip_brackets(row.get(name, ""))
        if value:
            return value
    queued, sender = row.get("timequeued", "").strip(), row.get("orig", "").strip()
    if queued:
        return f"{queued}:{sender}"
    raise AdapterError(
        "message id: the record has none of header_Message-Id, envId, jobId, timeQueued"
    )


def _meaning(kind: str, row: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The event family and its fields for one converted record type."""
    category = row.get("bouncecat", "").strip() or None
    mx_host = mta_host(row.get("dsnmta", ""))
    sending_ip = row.get("dlvsourceip", "").strip() or row.get("vmta", "").strip() or None
    if kind == "d":
        return "send", {"kind": "delivered", "mx_host": mx_host, "sending_ip": sending_ip}
    if kind == "f":
        return "bounce", {
            "kind": "complaint",
            "vendor_class": row.get("feedbacktype", "").strip() or None,
        }
    code, status, text = parse_reply(row.get("dsndiag", ""), row.get("dsnstatus", ""))
    reply = {"smtp_code": code, "enhanced_status": status, "diagnostic": text}
    if kind == "rb":
        mx_host = mx_host or mta_host(row.get("dsnreportingmta", ""))
        return "bounce", {"kind": "async", "mx_host": mx_host, "vendor_class": category, **reply}
    connection = code is None and (
        category in _CONNECTION_CATEGORIES or bool(text and _CONNECTION_TEXT.search(text))
    )
    fields = {
        **reply,
        "mx_host": mx_host,
        "sending_ip": sending_ip,
        "vendor_class": category,
        "origin": CONNECTION if connection else None,
    }
    if kind == "t":
        return "retry", {"kind": "deferred", **fields}
    # A b record is final: with a temporary status, PowerMTA gave up retrying.
    if code is not None:
        temporary = 400 <= code < 500
    elif status is not None:
        temporary = status.startswith("4")
    else:
        temporary = category == "message-expired"
    if temporary:
        return "retry", {"kind": "expired", **fields}
    return "bounce", {"kind": "sync", **fields}


CONVERTER = PmtaConverter
