"""The fields of a KumoMTA log record, read and checked (crates/kumo-log-types: the
``JsonLogRecord`` kumod serialises). A field of the wrong shape raises ``AdapterError``
naming it."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from streams.adapters.base import CONNECTION, LOCAL, AdapterError, normalise_recipient

# delivery_id when neither the queue nor the meta data names a campaign or a tenant.
FALLBACK_DELIVERY = "kumomta"
INTERNAL = "KumoMTA internal:"
LARGEST_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
LARGEST_U16 = 65_535  # num_attempts and response codes are u16 in kumod

# kumod's own texts for attempts where no server answered (ready_queue.rs,
# smtp_dispatcher.rs, queue.rs): connection failures, timeouts, DNS.
_NO_ANSWER = re.compile(
    r"KumoMTA internal: failed to (?:connect to any candidate hosts|send message)"
    r"|MX didn't resolve to any hosts"
    r"|failed to resolve queue "
    r"|bulk delay of ready queue: too many successive connection failures"
)
# kumod's own decisions that are not marked "KumoMTA internal:".
_LOCAL_TEXT = re.compile(r" is on the list of prohibited_hosts")


def raw(obj: Any, canonical: bool = True) -> str:
    """JSON text of a value, even a hostile one; ``canonical``: keys sorted, so that equal
    values give equal texts."""
    try:
        return json.dumps(obj, default=str, sort_keys=canonical)
    except (ValueError, TypeError, RecursionError):
        return "<not printable>"


def string(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise AdapterError(f"{name}: not a string")
    return value


def recipients(obj: dict[str, Any]) -> list[str]:
    """``recipient``: a string, or an array of them (KumoMTA 2025.12 and later)."""
    value = obj.get("recipient")
    values = value if isinstance(value, list) else [value]
    if not values:
        raise AdapterError("recipient: empty list")
    return [normalise_recipient(v) for v in values]


def event_time(obj: dict[str, Any]) -> int:
    """``event_time`` (RFC 3339, sub-second) when it parses, else ``timestamp`` (epoch
    seconds) → epoch ms."""
    text = obj.get("event_time")
    if isinstance(text, str):
        try:
            parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            seconds = parsed.timestamp()
            if 0 <= seconds <= LARGEST_SECONDS:
                return round(seconds * 1000)
    value = obj.get("timestamp")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AdapterError("timestamp: missing or not epoch seconds")
    if not (math.isfinite(value) and 0 <= value <= LARGEST_SECONDS):
        raise AdapterError("timestamp: out of range")
    return round(value * 1000)


def u16(obj: dict[str, Any], name: str, label: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= LARGEST_U16:
        raise AdapterError(f"{label}: not an integer between 0 and {LARGEST_U16}")
    return value


def response(obj: dict[str, Any]) -> tuple[int, str | None, str]:
    """``response`` → (code, enhanced status, content)."""
    value = obj.get("response")
    if not isinstance(value, dict):
        raise AdapterError("response: missing or not an object")
    code = u16(value, "code", "response.code")
    if code is None:
        raise AdapterError("response.code: missing")
    content = value.get("content") or ""
    if not isinstance(content, str):
        raise AdapterError("response.content: not a string")
    enhanced = value.get("enhanced_code")
    if enhanced is None:
        return code, None, content
    parts = (
        [enhanced.get(k) for k in ("class", "subject", "detail")]
        if isinstance(enhanced, dict)
        else []
    )
    if len(parts) != 3 or not all(
        isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 999 for p in parts
    ):
        raise AdapterError("response.enhanced_code: not {class, subject, detail} integers")
    return code, ".".join(str(p) for p in parts), content


def reply(code: int, status: str | None, content: str) -> dict[str, Any]:
    """The reply as an event carries it: the diagnostic is the single-line reply, as
    kumod prints it (code, enhanced status, content)."""
    line = " ".join(p for p in (str(code), status, content.strip()) if p)
    return {"smtp_code": code, "enhanced_status": status, "diagnostic": line}


def origin(content: str) -> str | None:
    """Who decided a failure: the receiver (None), kumod itself (local: a message held
    by a suspension, a throttle, a configuration), or nobody because no server answered
    (connection)."""
    if _NO_ANSWER.match(content):
        return CONNECTION
    if content.startswith(INTERNAL) or _LOCAL_TEXT.search(content):
        return LOCAL
    return None


def mx_host(obj: dict[str, Any]) -> str | None:
    """``peer_address.name``: the MX host name (its trailing dot removed)."""
    peer = obj.get("peer_address")
    if peer is None:
        return None
    if not isinstance(peer, dict):
        raise AdapterError("peer_address: not an object")
    name = string(peer, "name")
    return (name.rstrip(".") or None) if name else None


def queue_parts(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    """(campaign, tenant) of the queue name ``campaign:tenant@domain``, read as kumod's
    QueueNameComponents does: the first ``@``, then the first ``:`` before it."""
    prefix, at, _ = (string(obj, "queue") or "").partition("@")
    if not at:
        return None, None
    campaign, colon, tenant = prefix.partition(":")
    if not colon:
        return None, prefix or None
    return campaign or None, tenant or None


def meta(obj: dict[str, Any], name: str) -> str | None:
    """A string of the record's ``meta`` (the logger's ``meta`` list), if there."""
    values = obj.get("meta")
    value = values.get(name) if isinstance(values, dict) else None
    return value if isinstance(value, str) and value else None


def campaign(obj: dict[str, Any]) -> str | None:
    return queue_parts(obj)[0] or meta(obj, "campaign")


def delivery_id(obj: dict[str, Any]) -> str:
    """The campaign of the queue (or meta), else its tenant, else ``kumomta``."""
    return campaign(obj) or queue_parts(obj)[1] or meta(obj, "tenant") or FALLBACK_DELIVERY
