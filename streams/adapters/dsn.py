"""A bounce mailbox's messages → input events: RFC 3464 delivery status notifications (and
their RFC 6533 internationalized form), RFC 5965 ARF feedback reports, and the non-standard
bounces that ``qualify --dsn`` knows.

``feed`` takes one whole message (RFC 5322 text). What the message is comes from the
parser of ``mta-feedback qualify --dsn`` (``streams.domain.bounce.dsn.parse_report``); the
fields that parser does not keep (the report's dates and ids, every recipient block of a
DSN, the returned headers) are read here (``dsn_fields``).

- DSN recipient ``Action: failed`` → ``bounce``/``async`` with the remote reply, or
  ``retry``/``expired`` when its Status is 4.x.x or X.4.7 (the sending MTA gave up after
  temporary failures); ``Action: delayed`` → ``retry``/``deferred``; delivered, relayed and expanded
  → skipped.
- ARF report of a complaint (Feedback-Type abuse or fraud, or none) → ``bounce``/
  ``complaint`` for the complainer; other feedback types (not-spam, auth-failure, virus,
  other) are not complaints about the mail we sent and are skipped.
- A non-standard bounce → ``bounce``/``async`` for each address quoted beside a reply.
- Anything else (an auto-reply, spam, a person's mail) → skipped.

The original message: the project's own header ``X-MTA-Feedback-Id: <delivery_id>/<message_id>``
in the returned headers gives both ids exactly; else ``Original-Envelope-Id``, else the
returned ``Message-ID`` (or Gmail's ``X-Original-Message-ID``; angle brackets removed),
each followed by ``:recipient`` as the log adapters (postfix, pmta) name a message to one
recipient; else the report's own Message-ID with the recipient. The delivery is ``dsn``
unless the header names it.
"""

from __future__ import annotations

import email
import email.policy
import re

from streams.adapters.base import (
    CONNECTION,
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
from streams.adapters.dsn_fields import (
    DSN_TYPES,
    Original,
    ReportFields,
    find_part,
    report_fields,
    to_bytes,
)
from streams.domain.bounce.dsn import MAX_MESSAGE, RecipientResult, parse_report
from streams.domain.bounce.qualifier import Qualifier, default_qualifier
from streams.domain.bounce.rules import parse_reply

VENDOR = "dsn"
# The delivery of a report whose returned headers do not carry X-MTA-Feedback-Id.
FALLBACK_DELIVERY = "dsn"
# Feedback types that are a recipient's complaint about the mail (RFC 5965 section 7.3).
COMPLAINT_TYPES = frozenset({"abuse", "fraud", None})
# A reply is far shorter; the human-text fallback may be a whole page.
MAX_DIAGNOSTIC = 2_000
# The input topics refuse longer names (streams/runtime/validate.py).
MAX_HOST = 255

_STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
# An MTA's own text (not a server's reply) about a connection that got no answer.
_CONNECTION_RE = re.compile(
    r"connection (?:timed out|refused|reset)|timed out while|no route to host|"
    r"network is unreachable|lost connection|connect to .{0,300}?: ",
    re.IGNORECASE,
)
_FEEDBACK_TYPE_RE = re.compile(r"[a-z][a-z-]{0,30}")


class DsnConverter(Converter):
    """One message per ``feed``; no state between messages."""

    name = VENDOR

    def __init__(self, qualifier: Qualifier | None = None) -> None:
        # parse_report qualifies as it parses; the events carry the reply, and the pipeline
        # qualifies them again with the operator's rules.
        self._qualifier = qualifier or default_qualifier()

    def feed(self, text: str) -> list[Result]:
        try:
            return self._convert(text)
        except AdapterError as exc:
            return [bad(text, str(exc))]
        except Exception as exc:  # the email package fails in odd ways on hostile MIME
            return [bad(text, f"mime: the message cannot be parsed ({type(exc).__name__})")]

    def _convert(self, text: str) -> list[Result]:
        raw = to_bytes(text)[:MAX_MESSAGE]
        if not raw.strip():
            raise AdapterError("message: empty")
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        if not msg.keys():
            raise AdapterError("message: no header fields (not an RFC 5322 message)")
        if msg.get_content_type() == "multipart/report" and not (
            msg.is_multipart() and msg.get_payload()
        ):
            raise AdapterError("mime: multipart/report with no parts (boundary missing or wrong)")
        report = parse_report(raw, self._qualifier)
        fields = report_fields(msg, raw, text)
        if report.kind == "complaint":
            return [self._complaint(report.results[0], report.feedback_type, fields)]
        if find_part(msg, *DSN_TYPES) is not None:
            return self._dsn(fields)
        if report.kind == "bounce":
            return [self._plain_bounce(r, fields) for r in report.results]
        return [Skip("auto_reply" if report.kind == "auto_reply" else "not_report")]

    def _dsn(self, fields: ReportFields) -> list[Result]:
        if not fields.recipients:
            raise AdapterError("dsn: the delivery-status part names no recipient")
        results: list[Result] = []
        for block in fields.recipients:
            action = block.action or _action_from_status(block.status)
            if action in ("delivered", "relayed", "expanded"):
                results.append(Skip(action))
                continue
            if action not in ("failed", "delayed"):
                results.append(bad(fields.text, "dsn: a recipient block has no usable Action"))
                continue
            if not block.recipient:
                results.append(bad(fields.text, "dsn: a recipient block has no address"))
                continue
            diagnostic = block.diagnostic or fields.paragraph_for(block.recipient)
            results.append(
                self._failure(
                    fields,
                    block.recipient,
                    action,
                    block.status,
                    diagnostic,
                    from_mta=block.diagnostic_type not in (None, "smtp"),
                    mx_host=block.remote_mta,
                    when=block.last_attempt,
                )
            )
        return results

    def _plain_bounce(self, result: RecipientResult, fields: ReportFields) -> Result:
        if not result.recipient:
            return bad(fields.text, "bounce: no recipient address")
        return self._failure(
            fields,
            result.recipient,
            "failed",
            result.status,
            result.diagnostic,
            from_mta=False,
            mx_host=None,
            when=None,
        )

    def _failure(
        self,
        fields: ReportFields,
        recipient: str,
        action: str,
        status_field: str | None,
        diagnostic: str | None,
        *,
        from_mta: bool,
        mx_host: str | None,
        when: int | None,
    ) -> Result:
        text = " ".join(diagnostic.split())[:MAX_DIAGNOSTIC] if diagnostic else None
        code, reply_status = parse_reply(text) if text else (None, None)
        found = _STATUS_RE.search(status_field or "")
        status = ".".join(found.groups()) if found else None
        if status is None and reply_status is not None:
            status = ".".join(map(str, reply_status))
        if action == "delayed":
            family, kind = "retry", "deferred"
        elif status is not None and (status.startswith("4") or status.endswith(".4.7")):
            # Failed after temporary failures, or X.4.7 "delivery time expired" (RFC 3463).
            family, kind = "retry", "expired"
        else:
            family, kind = "bounce", "async"
        origin = None
        if from_mta and code is None and text and _CONNECTION_RE.search(text):
            origin = CONNECTION
        event = self._base(fields, recipient, when, (action, status))
        event.update(
            kind=kind,
            smtp_code=code,
            enhanced_status=status,
            diagnostic=text,
            mx_host=mx_host if mx_host and len(mx_host) <= MAX_HOST else None,
            origin=origin,
        )
        return Event(family, event)

    def _complaint(
        self, result: RecipientResult, feedback_type: str | None, fields: ReportFields
    ) -> Result:
        if feedback_type not in COMPLAINT_TYPES:
            kind = feedback_type if _FEEDBACK_TYPE_RE.fullmatch(feedback_type or "") else "other"
            return Skip(f"feedback_{kind}")
        if not result.recipient:
            return bad(
                fields.text, "arf: no complainer (no Original-Rcpt-To, no To in the returned part)"
            )
        event = self._base(fields, result.recipient, None, ("complaint", feedback_type))
        event["kind"] = "complaint"
        return Event("bounce", event)

    @staticmethod
    def _base(
        fields: ReportFields,
        address: str,
        when: int | None,
        what: tuple[str | None, str | None],
    ) -> dict[str, object]:
        recipient = normalise_recipient(address)
        event_time = when or fields.event_time
        if event_time is None:
            raise AdapterError("date: the report carries no usable Date, Received or Arrival-Date")
        delivery_id, message_id = _ids(fields.original, recipient, fields.report_id)
        return {
            "event_id": stable_id(VENDOR, fields.report_id, recipient.lower(), *what),
            "event_time": event_time,
            "delivery_id": delivery_id,
            "message_id": message_id,
            "recipient": recipient,
        }


def _ids(original: Original, recipient: str, report_id: str) -> tuple[str, str]:
    """(delivery_id, message_id) of the original message, in the documented order."""
    if original.feedback_id is not None:
        return original.feedback_id
    mta_id = original.envelope_id or original.message_id or report_id
    return FALLBACK_DELIVERY, message_key(mta_id, recipient, True)


def _action_from_status(status: str | None) -> str | None:
    """A recipient block without Action: what its Status class says (as parse_report
    counts such a block as a failure)."""
    found = _STATUS_RE.search(status or "")
    if found is None:
        return None
    return {"2": "delivered", "4": "delayed", "5": "failed"}[found[1]]


CONVERTER = DsnConverter
