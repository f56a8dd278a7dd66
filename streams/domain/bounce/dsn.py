"""Bounce and feedback messages -> per-recipient qualifications.

:func:`parse_report` recognises, in this order:

* RFC 3464 delivery status notifications (``multipart/report;
  report-type=delivery-status``): one :class:`RecipientResult` per recipient block
  whose Action is ``failed`` or ``delayed`` (delivered/relayed/expanded are not
  failures). The reply is qualified from Diagnostic-Code and Status; when the
  Diagnostic-Code is missing or empty, from the human-readable part (the paragraph
  that names the recipient, else the whole text).
* Non-standard bounces (no delivery-status part, but sent by a mailer daemon or with a
  bounce subject): one result per recipient address quoted next to an SMTP reply in the
  text.
* RFC 5965 ARF feedback reports: kind ``complaint``, one result for Original-Rcpt-To
  (else the To of the attached original message). A complaint is qualified as class 90
  (the recipient opted out), failure type ``hard``, reason ``Refused``: Campaign puts
  complaining addresses in quarantine with that reason, and mailing them again hurts the
  sender's reputation.
* Automatic replies (RFC 3834 Auto-Submitted other than "no", X-Autoreply,
  X-Autorespond, Precedence auto_reply, out-of-office subjects): kind ``auto_reply``,
  class 60, ``ignored``. DSNs are checked first because they carry Auto-Submitted too.
* Anything else: kind ``not_bounce`` with no result.

The parser never raises: unparsable input is ``not_bounce``.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.message import Message
from typing import Literal

from streams.domain.bounce.qualifier import Qualifier
from streams.domain.bounce.rules import parse_reply
from streams.domain.types import Qualification

ReportKind = Literal["bounce", "complaint", "auto_reply", "not_bounce"]

COMPLAINT = Qualification("hard", "Refused", 90, "arf-complaint")
AUTO_REPLY = Qualification("ignored", "Error ignored", 60, "auto-reply-headers")

_FAILED_ACTIONS = frozenset({"failed", "delayed"})
_ADDRESS_RE = re.compile(r"<?([A-Za-z0-9._%+=\-!#$&'*/?^`{|}~]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,})>?")
_BOUNCE_SENDER_RE = re.compile(r"mailer-daemon|postmaster|mail delivery", re.IGNORECASE)
_BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|undelivered|delivery (?:status notification|failure|has failed)|"
    r"mail delivery failed|returned mail|failure notice|could not be delivered|"
    r"non[- ]?remis|unzustellbar",
    re.IGNORECASE,
)
_AUTO_SUBJECT_RE = re.compile(
    r"^\s*(?:out of (?:the )?office|auto(?:matic)?[- ]?(?:reply|response)|auto:|autoreply|"
    r"abwesen|absence|r[eé]ponse automatique|vacation)",
    re.IGNORECASE,
)
_REPLY_LINE_RE = re.compile(
    r"\b[245]\d\d[ \-]|#[245]\.\d{1,3}\.\d{1,3}|\b[245]\.\d{1,3}\.\d{1,3}\b"
)
# Enough for any real bounce; a larger body is cut before parsing.
MAX_MESSAGE = 1_000_000


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """One recipient of a report: the DSN fields (None when absent) and the verdict."""

    recipient: str | None
    status: str | None
    diagnostic: str | None
    action: str | None
    remote_mta: str | None
    qualification: Qualification


@dataclass(frozen=True, slots=True)
class ReportResult:
    """What a message is (``kind``) and one result per failed or complaining recipient;
    ``feedback_type`` is the ARF Feedback-Type of a complaint."""

    kind: ReportKind
    results: tuple[RecipientResult, ...] = ()
    feedback_type: str | None = None


def parse_report(raw: bytes, qualifier: Qualifier) -> ReportResult:
    """Classify and qualify one message (bytes as received)."""
    try:
        msg = email.message_from_bytes(raw[:MAX_MESSAGE], policy=email.policy.compat32)
        return _parse(msg, qualifier)
    except Exception:  # malformed MIME must not stop a batch
        return ReportResult("not_bounce")


def _parse(msg: Message, qualifier: Qualifier) -> ReportResult:
    report_type = (
        (msg.get_param("report-type") or "") if msg.get_content_type() == "multipart/report" else ""
    )
    report_type = str(report_type).lower()
    feedback = _find_part(msg, "message/feedback-report")
    if report_type == "feedback-report" or feedback is not None:
        return _parse_arf(msg, feedback)
    status_part = _find_part(msg, "message/delivery-status")
    if report_type == "delivery-status" or status_part is not None:
        results = _parse_dsn(msg, status_part, qualifier)
        if results:
            return ReportResult("bounce", results)
    if _looks_like_bounce(msg):
        results = _parse_plain_bounce(_human_text(msg), qualifier)
        if results:
            return ReportResult("bounce", results)
    if _is_auto_reply(msg):
        sender = _first_address(_header(msg, "From")) or None
        return ReportResult(
            "auto_reply", (RecipientResult(sender, None, None, None, None, AUTO_REPLY),)
        )
    return ReportResult("not_bounce")


def _header(msg: Message, name: str) -> str:
    value = msg.get(name)
    return " ".join(str(value).split()) if value is not None else ""


def _find_part(msg: Message, content_type: str) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() == content_type:
            return part
    return None


def _field_blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status or feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    # Some MTAs send the part with a transfer encoding; parse the decoded text.
    body = part.get_payload(decode=True) or b""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body)
    blocks = re.split(r"\r?\n\s*\r?\n", text.strip())
    return [email.message_from_string(b + "\n", policy=email.policy.compat32) for b in blocks if b]


def _typed_value(value: str) -> str:
    """``rfc822; a@b`` -> ``a@b``; ``smtp; 550 ...`` -> ``550 ...``."""
    head, sep, rest = value.partition(";")
    return rest.strip() if sep and " " not in head.strip() else value.strip()


def _parse_dsn(
    msg: Message, part: Message | None, qualifier: Qualifier
) -> tuple[RecipientResult, ...]:
    human = _human_text(msg)
    blocks = _field_blocks(part) if part is not None else []
    results = []
    for block in blocks[1:] or blocks:
        recipient = _first_address(
            _typed_value(_header(block, "Final-Recipient") or _header(block, "Original-Recipient"))
        )
        if not recipient:
            continue
        action = _header(block, "Action").lower() or None
        if action is not None and action not in _FAILED_ACTIONS:
            continue
        status = _header(block, "Status") or None
        diagnostic = _typed_value(_header(block, "Diagnostic-Code")) or None
        remote = _typed_value(_header(block, "Remote-MTA")) or None
        text = diagnostic or _paragraph_for(human, recipient)
        provider = remote or recipient.rpartition("@")[2]
        results.append(
            RecipientResult(
                recipient,
                status,
                diagnostic,
                action,
                remote,
                qualifier.qualify(None, status, text, provider),
            )
        )
    if not results and part is None:
        return _parse_plain_bounce(human, qualifier)
    return tuple(results)


def _parse_arf(msg: Message, part: Message | None) -> ReportResult:
    blocks = _field_blocks(part) if part is not None else []
    fields = blocks[0] if blocks else Message()
    feedback_type = _header(fields, "Feedback-Type").lower() or None
    recipient = _first_address(_header(fields, "Original-Rcpt-To"))
    if not recipient:
        original = _find_part(msg, "message/rfc822") or _find_part(msg, "text/rfc822-headers")
        if original is not None:
            recipient = _first_address(_original_header(original, "To"))
    result = RecipientResult(recipient or None, None, None, None, None, COMPLAINT)
    return ReportResult("complaint", (result,), feedback_type)


def _original_header(part: Message, name: str) -> str:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return _header(payload[0], name)
    body = part.get_payload(decode=True) or b""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body)
    return _header(email.message_from_string(text, policy=email.policy.compat32), name)


def _human_text(msg: Message) -> str:
    """The first text/plain part that is not the returned original message."""
    for part in msg.walk():
        if part.get_content_type() == "message/rfc822":
            break
        if part.get_content_type() == "text/plain":
            body = part.get_payload(decode=True) or b""
            charset = part.get_content_charset() or "utf-8"
            try:
                return body.decode(charset, errors="replace")
            except LookupError:
                return body.decode("utf-8", errors="replace")
    return ""


def _paragraph_for(text: str, recipient: str) -> str:
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    for n, para in enumerate(paragraphs):
        if recipient.lower() in para.lower():
            # qmail and Exim put the address alone and the reply in the next paragraph.
            if not _REPLY_LINE_RE.search(para) and n + 1 < len(paragraphs):
                return para + " " + paragraphs[n + 1]
            return para
    return text


def _parse_plain_bounce(text: str, qualifier: Qualifier) -> tuple[RecipientResult, ...]:
    results: dict[str, RecipientResult] = {}
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    for n, para in enumerate(paragraphs):
        reply = para if _REPLY_LINE_RE.search(para) else None
        if reply is None and n + 1 < len(paragraphs) and _REPLY_LINE_RE.search(paragraphs[n + 1]):
            reply = para + " " + paragraphs[n + 1]
        if reply is None:
            continue
        recipient = _first_address(para)
        if not recipient or recipient in results:
            continue
        code, status = parse_reply(reply)
        status_text = ".".join(map(str, status)) if status else None
        results[recipient] = RecipientResult(
            recipient,
            status_text,
            " ".join(reply.split()),
            "failed",
            None,
            qualifier.qualify(code, status_text, reply, recipient.rpartition("@")[2]),
        )
    return tuple(results.values())


def _looks_like_bounce(msg: Message) -> bool:
    return bool(
        _BOUNCE_SENDER_RE.search(_header(msg, "From"))
        or _BOUNCE_SUBJECT_RE.search(_header(msg, "Subject"))
        or (
            _header(msg, "Return-Path") == "<>"
            and _BOUNCE_SUBJECT_RE.search(_human_text(msg)[:500])
        )
    )


def _is_auto_reply(msg: Message) -> bool:
    auto = _header(msg, "Auto-Submitted").lower()
    if auto and auto != "no":
        return True
    if msg.get("X-Autoreply") is not None or msg.get("X-Autorespond") is not None:
        return True
    if _header(msg, "Precedence").lower() == "auto_reply":
        return True
    return bool(_AUTO_SUBJECT_RE.search(_header(msg, "Subject")))


def _first_address(text: str) -> str:
    found = _ADDRESS_RE.search(text)
    return found[1] if found else ""
