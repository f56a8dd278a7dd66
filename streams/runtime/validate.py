"""Checks on decoded input events that Avro cannot express: absurd values and huge texts.

A record that fails is dead-lettered with the reason; nothing here raises anything else.
Event time is bounded on both sides because one far-future timestamp would move the
event-time clock and expire every pending message at once.
"""

from __future__ import annotations

import re
import time
import unicodedata
from typing import Any

from streams.domain.events import OPERATOR, ORIGINS
from streams.runtime.codec import DecodeError

MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01
MAX_FUTURE_SKEW_MS = 7 * 86_400_000  # MTAs and simulations may run a little ahead
MAX_ID_LEN = 256
MAX_ADDRESS_LEN = 320  # RFC 5321: 64 local + @ + 255 domain
MAX_TEXT_LEN = 16_384  # multi-line SMTP replies stay far below this
MAX_VALIDITY_S = 366 * 86_400
MAX_ATTEMPT = 10_000
MAX_REASON_LEN = 1_000  # an operator's reason becomes the address's, shown and exported

_STATUS_RE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_BAD_ADDRESS_CHARS = re.compile(r"[\s\x00-\x1f\x7f<>]")


def _has_invisible(text: str) -> bool:
    """Other (C*: format such as bidi overrides and zero-width, private use, unassigned) or
    separator (Z*) characters: no real address has them, and they spoof what people read."""
    return any(unicodedata.category(c)[0] in "CZ" for c in text)


def _has_control(text: str) -> bool:
    """Control, format, private-use or unassigned characters (Unicode category C*): they have
    no place in a name or a one-line reason, and forge or hide text in logs and exports."""
    return any(unicodedata.category(c)[0] == "C" for c in text)


def _fail(reason: str) -> DecodeError:
    return DecodeError("invalid", reason)


def _check_time(name: str, value: int | None, now_ms: int) -> None:
    if value is None:
        return
    if value < MIN_EVENT_TIME_MS:
        raise _fail(f"{name} {value} is before 2000-01-01")
    if value > now_ms + MAX_FUTURE_SKEW_MS:
        raise _fail(f"{name} {value} is more than 7 days in the future")


def validate_event(family: str, event: dict[str, Any], now_ms: int | None = None) -> None:
    """Raise DecodeError('invalid', reason) if the event carries unusable values."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    operator = family == OPERATOR
    for name in ("event_id",) if operator else ("event_id", "delivery_id", "message_id"):
        value = event[name]
        if not value or len(value) > MAX_ID_LEN:
            raise _fail(f"{name} is empty or longer than {MAX_ID_LEN} characters")
    recipient = event["recipient"]
    if len(recipient) > MAX_ADDRESS_LEN:
        raise _fail(f"recipient is {len(recipient)} characters long (max {MAX_ADDRESS_LEN})")
    local, at, domain = recipient.rpartition("@")
    if not at or not local or not domain or "." not in domain:
        raise _fail("recipient is not an address of the form local@domain.tld")
    if _BAD_ADDRESS_CHARS.search(recipient):
        raise _fail("recipient contains white space, control characters or angle brackets")
    if not recipient.isascii() and _has_invisible(recipient):
        raise _fail("recipient contains invisible Unicode (format, bidi, zero-width or space)")
    _check_time("event_time", event["event_time"], now)
    if operator:
        _check_operator(event)
        return
    _check_time("next_attempt_time", event.get("next_attempt_time"), now + MAX_VALIDITY_S * 1000)
    validity = event.get("validity_seconds")
    if validity is not None and not 0 < validity <= MAX_VALIDITY_S:
        raise _fail(f"validity_seconds {validity} is not between 1 and {MAX_VALIDITY_S}")
    code = event.get("smtp_code")
    if code is not None and not 200 <= code <= 599:
        raise _fail(f"smtp_code {code} is not a reply code (200-599)")
    status = event.get("enhanced_status")
    if status is not None and not _STATUS_RE.fullmatch(status):
        raise _fail("enhanced_status is not of the form class.subject.detail (e.g. 5.1.1)")
    attempt = event.get("attempt")
    if attempt is not None and not 0 <= attempt <= MAX_ATTEMPT:
        raise _fail(f"attempt {attempt} is not between 0 and {MAX_ATTEMPT}")
    diagnostic = event.get("diagnostic")
    if diagnostic is not None and len(diagnostic) > MAX_TEXT_LEN:
        raise _fail(f"diagnostic is {len(diagnostic)} characters long (max {MAX_TEXT_LEN})")
    origin = event.get("origin")
    if origin is not None and origin not in ORIGINS:
        raise _fail(f"origin {origin[:40]!r} is not one of {', '.join(ORIGINS)}")
    for name in ("mx_host", "sending_ip", "campaign_id", "vendor_class"):
        value = event.get(name)
        if value is not None and len(value) > MAX_ID_LEN:
            raise _fail(f"{name} is longer than {MAX_ID_LEN} characters")


def _check_operator(event: dict[str, Any]) -> None:
    """Who and why of an operator's action: the audit trail must be readable."""
    actor = event["actor"]
    if not actor.strip() or len(actor) > MAX_ID_LEN:
        raise _fail(f"actor is blank or longer than {MAX_ID_LEN} characters")
    if _has_control(actor):
        raise _fail("actor contains control or invisible characters")
    reason = event.get("reason")
    if reason is not None and len(reason) > MAX_REASON_LEN:
        raise _fail(f"reason is {len(reason)} characters long (max {MAX_REASON_LEN})")
    if reason is not None and _has_control(reason):
        raise _fail("reason contains control or invisible characters (one line of text)")
