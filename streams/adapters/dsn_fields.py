"""What a bounce or feedback report carries beside its verdict: its own id and dates, every
recipient block of a DSN, and the identity of the original message (the project's
``X-MTA-Feedback-Id`` header, Original-Envelope-Id, the returned Message-ID).

``streams.domain.bounce.dsn.parse_report`` classifies a message and keeps only its failed
recipients; the events also need these fields, read here from the same MIME structure.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC
from email.message import Message

# The project's header, added by Campaign-side senders: ``<delivery_id>/<message_id>``.
FEEDBACK_HEADER = "X-MTA-Feedback-Id"
# The input topics' longest id (streams/runtime/validate.py).
MAX_ID = 256

_FEEDBACK_VALUE_RE = re.compile(r"([^/\s]{1,256})/(\S{1,256})")
# The header quoted in a non-standard bounce's text (no returned-headers part).
_FEEDBACK_LINE_RE = re.compile(
    rb"^" + FEEDBACK_HEADER.encode() + rb":[ \t]*([^\r\n]+)", re.IGNORECASE | re.MULTILINE
)
_ADDRESS_RE = re.compile(r"[^\s<>@;,\"()\[\]]+@[^\s<>@;,\"()\[\]]+\.[A-Za-z]{2,}")
_RETURNED_TYPES = ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers")
# RFC 3464, and RFC 6533's internationalized form (UTF-8 addresses and texts).
DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")


@dataclass(frozen=True, slots=True)
class Original:
    """What identifies the message the report is about (each None when absent)."""

    feedback_id: tuple[str, str] | None  # (delivery_id, message_id) from our header
    envelope_id: str | None
    message_id: str | None


@dataclass(frozen=True, slots=True)
class RecipientBlock:
    """One recipient block of a delivery-status part (RFC 3464 section 2.3)."""

    recipient: str | None
    action: str | None
    status: str | None
    diagnostic: str | None  # the Diagnostic-Code text, its type removed
    diagnostic_type: str | None  # "smtp", or the MTA's own (e.g. "x-postfix")
    remote_mta: str | None
    last_attempt: int | None  # epoch ms


@dataclass(frozen=True, slots=True)
class ReportFields:
    text: str  # the message as fed, for a dead letter
    report_id: str  # the report's Message-ID, else a digest of its bytes
    event_time: int | None  # epoch ms: Date, else the newest Received, else Arrival-Date
    original: Original
    recipients: tuple[RecipientBlock, ...]
    human: str  # the notification's text part

    def paragraph_for(self, recipient: str) -> str | None:
        """The human text's paragraph that names ``recipient`` (with the next one when it
        holds only the address, as Exchange and qmail write it), for a recipient block
        without Diagnostic-Code."""
        paragraphs = [p for p in re.split(r"\n\s*\n", self.human) if p.strip()]
        for n, para in enumerate(paragraphs):
            if recipient.lower() in para.lower():
                following = paragraphs[n + 1] if n + 1 < len(paragraphs) else ""
                return para if re.search(r"\b[245]\d\d\b", para) else f"{para} {following}"
        return None


def to_bytes(text: str) -> bytes:
    """The message's bytes: the tools decode files with ``surrogateescape``, so 8-bit
    content comes back unchanged; other lone surrogates become '?'."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def clean(value: str) -> str:
    """A header value as text: raw 8-bit bytes read as UTF-8, white space collapsed."""
    return " ".join(to_bytes(value).decode("utf-8", "replace").split())


def header(msg: Message, name: str) -> str:
    """A header's first value, unparsed (compat32 would turn 8-bit text into '?')."""
    wanted = name.lower()
    for key, value in msg.raw_items():
        if key.lower() == wanted:
            return clean(str(value))
    return ""


def find_part(msg: Message, *content_types: str) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() in content_types:
            return part
    return None


def typed_value(value: str) -> tuple[str | None, str]:
    """``smtp; 550 ...`` → ("smtp", "550 ..."); a value without a type → (None, value)."""
    head, sep, rest = value.partition(";")
    if sep and head.strip() and " " not in head.strip():
        return head.strip().lower(), rest.strip()
    return None, value.strip()


def epoch_ms(value: str) -> int | None:
    """An RFC 5322 date (obsolete forms too) → epoch ms; None when it is not one."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # "-0000": the zone is unknown, read as UTC
    return int(parsed.timestamp() * 1000)


def field_blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status or feedback-report part."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        # Sent with a transfer encoding: the blocks are in the decoded text.
        return _split_blocks(bytes(part.get_payload(decode=True) or b""))
    blocks = [p for p in payload if isinstance(p, Message)]
    if part.get_content_type() == DSN_TYPES[1] and len(blocks) == 1:
        # Parsed as one message: its header is the per-message block, its body the rest.
        rest = blocks[0].get_payload(decode=True)
        return [blocks[0], *_split_blocks(rest if isinstance(rest, bytes) else b"")]
    return blocks


def _split_blocks(text: bytes) -> list[Message]:
    blocks = re.split(rb"\r?\n[ \t]*\r?\n", text.strip())
    return [email.message_from_bytes(b + b"\n", policy=email.policy.compat32) for b in blocks if b]


def report_fields(msg: Message, raw: bytes, text: str) -> ReportFields:
    status = find_part(msg, *DSN_TYPES)
    feedback = find_part(msg, "message/feedback-report")
    blocks = field_blocks(status or feedback) if (status or feedback) is not None else []
    recipient_blocks = [b for b in blocks if _has_recipient(b)]
    per_message = blocks[0] if blocks and not _has_recipient(blocks[0]) else Message()
    returned = _returned_headers(msg)
    report_id = (
        _id(unbracket(header(msg, "Message-ID")))
        or hashlib.blake2b(raw, digest_size=12).hexdigest()
    )
    event_time = (
        epoch_ms(header(msg, "Date"))
        or epoch_ms(header(msg, "Received").rpartition(";")[2])
        or epoch_ms(header(per_message, "Arrival-Date"))
    )
    return ReportFields(
        text=text,
        report_id=report_id,
        event_time=event_time,
        original=returned_ids(msg, raw, per_message, returned),
        recipients=tuple(_recipient_block(b) for b in recipient_blocks) if status else (),
        human=_human_text(msg),
    )


def returned_ids(
    msg: Message, raw: bytes, per_message: Message, returned: Message | None
) -> Original:
    """The original message's ids from the returned headers (or, for our header, a line of
    the report's text) and the report's per-message fields."""
    value = header(returned, FEEDBACK_HEADER) if returned is not None else ""
    if not value:
        body = raw.partition(b"\n\n")[2] or raw.partition(b"\r\n\r\n")[2]
        found = _FEEDBACK_LINE_RE.search(body)
        value = clean(found[1].decode("utf-8", "replace")) if found else ""
    parsed = _FEEDBACK_VALUE_RE.fullmatch(value)
    message_id = header(returned, "Message-ID") if returned is not None else ""
    message_id = message_id or header(per_message, "X-Original-Message-ID")
    return Original(
        feedback_id=(parsed[1], parsed[2]) if parsed else None,
        envelope_id=_id(header(per_message, "Original-Envelope-Id")),
        message_id=_id(unbracket(message_id)),
    )


def unbracket(message_id: str) -> str:
    """``<id@host>`` → ``id@host``, as the log adapters write a Message-ID."""
    return (
        message_id[1:-1].strip() if message_id[:1] == "<" and message_id[-1:] == ">" else message_id
    )


def _id(value: str) -> str | None:
    # Room for ":recipient" within the input topics' limit; a longer id is not an id.
    return value if value and len(value) <= MAX_ID - 100 and " " not in value else None


def _has_recipient(block: Message) -> bool:
    return bool(header(block, "Final-Recipient") or header(block, "Original-Recipient"))


def _address(value: str) -> str | None:
    kind, rest = typed_value(value)
    if kind not in (None, "rfc822", "utf-8"):
        return None
    found = _ADDRESS_RE.search(rest)
    return found[0] if found else None


def _recipient_block(block: Message) -> RecipientBlock:
    # The address the sender gave (Original-Recipient) is the one its send event names;
    # Final-Recipient may be an alias's target.
    recipient = _address(header(block, "Original-Recipient")) or _address(
        header(block, "Final-Recipient")
    )
    diagnostic_type, diagnostic = typed_value(header(block, "Diagnostic-Code"))
    # Gmail adds a comment after the host name: keep the name alone.
    remote = typed_value(header(block, "Remote-MTA"))[1].split(" ", 1)[0].rstrip(".")
    return RecipientBlock(
        recipient=recipient,
        action=header(block, "Action").lower() or None,
        status=header(block, "Status") or None,
        diagnostic=diagnostic or None,
        diagnostic_type=diagnostic_type if diagnostic else None,
        remote_mta=remote or None,
        last_attempt=epoch_ms(header(block, "Last-Attempt-Date")),
    )


def _returned_headers(msg: Message) -> Message | None:
    part = find_part(msg, *_RETURNED_TYPES)
    if part is None:
        return None
    payload = part.get_payload()
    if isinstance(payload, list):
        first = payload[0] if payload else None
        return first if isinstance(first, Message) else None
    body = part.get_payload(decode=True) or b""
    return email.message_from_bytes(bytes(body), policy=email.policy.compat32)


def _human_text(msg: Message) -> str:
    """The first text/plain part before the returned message."""
    for part in msg.walk():
        if part.get_content_type() in _RETURNED_TYPES:
            break
        if part.get_content_type() == "text/plain":
            body = bytes(part.get_payload(decode=True) or b"")
            try:
                return body.decode(part.get_content_charset() or "utf-8", "replace")
            except LookupError:  # an unknown charset name
                return body.decode("utf-8", "replace")
    return ""
