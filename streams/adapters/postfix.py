"""The Postfix mail log → input events (``--from postfix``).

Postfix logs a message in pieces, one syslog line each, joined by its queue ID: cleanup
logs its Message-ID, qmgr its sender (``from=<...>``), each delivery agent (smtp, lmtp,
local, virtual, pipe, error, and qmgr for held mail) one line per recipient attempt, qmgr
``status=expired`` when it gives up and ``removed`` at the end. The converter keeps what it
learnt about each open queue ID until ``removed``, so one converter must read a log in
order (rotated files one after the other). What each line becomes, and why:
docs/adapters/postfix.md.

- ``status=sent`` → send/delivered; ``status=deferred`` (and ``SOFTBOUNCE``) →
  retry/deferred with the reply; ``status=bounced`` → bounce/sync; qmgr ``status=expired``
  → retry/expired for every recipient still deferred, carrying its last deferral's reply.
- A recipient's first line implies the relay (send/relayed at the time the message was
  first seen), since Postfix logs none per recipient.
- Mail with the null sender (``from=<>``: Postfix's own bounces and delay notices) is
  skipped, as are address verification probes and lines about no queued message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from streams.adapters.base import (
    LOCAL,
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
from streams.adapters.postfix_reply import (
    DELIVERY,
    EXPIRED,
    MESSAGE_ID,
    NOTIFICATION,
    QUEUE_LINE,
    QUEUED,
    REMOVED,
    SUSPENDED,
    Reply,
    parse_reason,
    relay_host,
)
from streams.adapters.postfix_syslog import SyslogLine, YearResolver, parse_syslog

VENDOR = "postfix"
# Open queue IDs kept at most; past it the oldest is forgotten (counted), so that a long
# ``--follow`` of a log whose ``removed`` lines go missing cannot grow without bound.
MAX_OPEN = 1_000_000
# The delivery id when the sender is unknown (the message's qmgr line was not read).
UNKNOWN_SENDER = VENDOR

_DEFERRED = {"deferred", "SOFTBOUNCE"}  # SOFTBOUNCE: a bounce that soft_bounce=yes keeps
_PROBE = {"deliverable", "undeliverable", "undeliverable-but-not-cached"}
_LOOKS_POSTFIX = re.compile(r"\bpostfix[\w.-]*(?:/[\w.-]+)*\[\d+\]: ")


@dataclass(slots=True)
class _Recipient:
    delivery_id: str
    pending: bool = False  # deferred, with no final status yet
    last: Reply | None = None  # the reply of its last deferral


@dataclass(slots=True)
class _Queued:
    first_seen: int  # epoch ms of the message's first line: its relay time
    message_id: str | None = None
    sender: str | None = None
    notification: bool = False  # a bounce or delay notice Postfix wrote itself
    recipients: dict[str, _Recipient] = field(default_factory=dict)


class PostfixConverter(Converter):
    """One mail log, read in order. ``now``: the reference date that gives year-less
    timestamps their year (today by default); ``max_open``: open queue IDs kept at most."""

    name = VENDOR

    def __init__(self, now: datetime | None = None, max_open: int = MAX_OPEN) -> None:
        self._years = YearResolver(now or datetime.now(UTC))
        self._open: dict[tuple[str, str], _Queued] = {}
        self._max_open = max_open

    def feed(self, text: str) -> list[Result]:
        line = text.rstrip("\r\n")
        if not line.strip():
            return []
        try:
            parsed = parse_syslog(line, self._years)
            if parsed is None:
                if _LOOKS_POSTFIX.search(line):
                    return [bad(line, "syslog line: no timestamp, host and program")]
                return [Skip("not postfix")]
            if not parsed.postfix:
                return [Skip("not postfix")]
            queued = QUEUE_LINE.fullmatch(parsed.message)
            if queued is None:  # connect from, warnings, statistics, NOQUEUE rejects...
                return [Skip("not outgoing mail")]
            return self._queue_line(parsed, queued["qid"], queued["rest"])
        except AdapterError as exc:
            return [bad(line, str(exc))]

    def _queue_line(self, line: SyslogLine, qid: str, rest: str) -> list[Result]:
        key = (line.host, qid)
        if REMOVED.fullmatch(rest):
            self._open.pop(key, None)
            return []
        results, queue = self._queue(key, line.time_ms)
        if rest.startswith("to=<"):
            return results + self._delivery(line, qid, queue, rest)
        if m := QUEUED.fullmatch(rest):
            queue.sender = m["sender"]
            queue.notification = not m["sender"]
        elif EXPIRED.fullmatch(rest):
            return results + self._expired(line, qid, queue, rest)
        elif rest.startswith("from=<"):
            raise AdapterError(f"qmgr line: not a sender line: {rest[:80]!r}")
        elif m := MESSAGE_ID.fullmatch(rest):
            queue.message_id = m["id"].strip().removeprefix("<").removesuffix(">").strip() or None
        elif m := NOTIFICATION.fullmatch(rest):
            more, notice = self._queue((line.host, m["qid"]), line.time_ms)
            notice.notification = True
            results += more
        return results

    def _queue(self, key: tuple[str, str], time_ms: int) -> tuple[list[Result], _Queued]:
        """The state of a queue ID, opened at its first line (the oldest is forgotten when
        too many are open)."""
        queue = self._open.get(key)
        if queue is not None:
            return [], queue
        results: list[Result] = []
        if len(self._open) >= self._max_open:
            del self._open[next(iter(self._open))]
            results.append(Skip("queue id forgotten"))
        queue = self._open[key] = _Queued(time_ms)
        return results, queue

    def _delivery(self, line: SyslogLine, qid: str, queue: _Queued, rest: str) -> list[Result]:
        m = DELIVERY.fullmatch(rest)
        if m is None:
            raise AdapterError(f"delivery line: no dsn and status: {rest[:80]!r}")
        status = m["status"]
        if queue.notification:
            return [Skip("notification")]
        if status in _PROBE:
            return [Skip("address verification")]
        if status not in _DEFERRED and status not in ("sent", "bounced"):
            return [Skip(f"status {status[:20]}")]
        recipient = normalise_recipient(m["to"])
        results: list[Result] = []
        rcpt = queue.recipients.get(recipient)
        if rcpt is None:
            rcpt = queue.recipients[recipient] = _Recipient(queue.sender or UNKNOWN_SENDER)
            results.append(self._relayed(line, qid, queue, recipient, rcpt))
        ids = _ids(
            stable_id(VENDOR, line.host, qid, line.message, line.time_ms),
            line.time_ms,
            queue,
            qid,
            recipient,
            rcpt,
        )
        reason = m["reason"]
        if status == "sent":
            rcpt.pending = False
            event = {**ids, "kind": "delivered", "mx_host": relay_host(m["relay"])}
            return [*results, Event("send", event)]
        reply = parse_reason(reason, m["dsn"], final=status == "bounced")
        fields = reply.fields()
        if reply.mx_host is None:
            fields["mx_host"] = relay_host(m["relay"])
        if status == "bounced":
            rcpt.pending = False
            return [*results, Event("bounce", {**ids, "kind": "sync", **fields})]
        rcpt.pending, rcpt.last = True, reply
        if reason.startswith(SUSPENDED):
            fields["origin"] = LOCAL
        return [*results, Event("retry", {**ids, "kind": "deferred", **fields})]

    def _relayed(
        self, line: SyslogLine, qid: str, queue: _Queued, recipient: str, rcpt: _Recipient
    ) -> Event:
        event_id = stable_id(VENDOR, line.host, qid, "relayed", queue.message_id, recipient)
        ids = _ids(event_id, queue.first_seen, queue, qid, recipient, rcpt)
        return Event("send", {**ids, "kind": "relayed"})

    def _expired(self, line: SyslogLine, qid: str, queue: _Queued, rest: str) -> list[Result]:
        if queue.notification:
            return [Skip("notification")]
        pending = [(r, state) for r, state in queue.recipients.items() if state.pending]
        if not pending:
            return [Skip("expired, recipients unknown")]
        results: list[Result] = []
        for recipient, rcpt in pending:
            event_id = stable_id(VENDOR, line.host, qid, rest, line.time_ms, recipient)
            ids = _ids(event_id, line.time_ms, queue, qid, recipient, rcpt)
            reply = rcpt.last.fields() if rcpt.last else {}
            results.append(Event("retry", {**ids, "kind": "expired", **reply}))
            rcpt.pending = False
        return results


def _ids(
    event_id: str, time_ms: int, queue: _Queued, qid: str, recipient: str, rcpt: _Recipient
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_time": time_ms,
        "delivery_id": rcpt.delivery_id,
        "message_id": message_key(queue.message_id or qid, recipient, shared=True),
        "recipient": recipient,
    }


CONVERTER = PostfixConverter
