"""SparkPost / Momentum webhook batches → input events.

A batch is a JSON array of ``{"msys": {CLASS: {...}}}`` items (CLASS is ``message_event``,
``track_event``, ``gen_event``, ``unsubscribe_event``, ``relay_message``...); the item's
``type`` decides what it becomes (docs/adapters/sparkpost.md has the table). A bad item
gives one ``Bad`` and the rest of its batch is converted; ``[{"msys": {}}]`` is SparkPost's
ping and gives ``Skip("ping")``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from streams.adapters.base import (
    CONNECTION,
    LOCAL,
    AdapterError,
    Bad,
    Converter,
    Event,
    Result,
    Skip,
    bad,
    json_units,
    message_key,
    normalise_recipient,
    stable_id,
)

VENDOR = "sparkpost"
# delivery_id when an event names neither a campaign nor a transmission.
FALLBACK_DELIVERY = "sparkpost"
# Engagement, unsubscription and inbound-relay events: understood, no delivery status.
SKIPPED = frozenset(
    {
        "open",
        "initial_open",
        "click",
        "amp_open",
        "amp_initial_open",
        "amp_click",
        "list_unsubscribe",
        "link_unsubscribe",
        "relay_injection",
        "relay_rejection",
        "relay_delivery",
        "relay_tempfail",
        "relay_permfail",
    }
)
# Failures SparkPost decided itself, before or instead of any remote server.
LOCAL_TYPES = frozenset({"policy_rejection", "generation_failure", "generation_rejection"})
ADMIN_FAILURE_CLASS = "25"  # "failed by SparkPost's configured policies"
CONNECTION_CLASSES = frozenset({"21", "24"})  # DNS failure, timeout
# Momentum marks the replies it wrote itself with "[internal]"; "[oob]" ones carry a
# later bounce from the receiver, so they stay remote.
INTERNAL = "[internal]"
OOB = "[oob]"
LARGEST_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
LARGEST_COUNT = 2**31 - 2  # the attempt field is an Avro int

_REPLY = re.compile(r"\s*([2-5]\d\d)(?:[ -]+([245]\.\d{1,3}\.\d{1,3})\b)?")
_CONNECTION_TEXT = re.compile(
    r"timed? ?out|timeout|connection (?:refused|reset|closed|failed|lost)|no route to host|"
    r"unreachable|(?:could not|unable to|failed to) connect|no mx or a\b|dns (?:failure|error)",
    re.IGNORECASE,
)
# A message given up after its retries: "554 5.4.7 [internal] message timeout (last
# transfail: <the receiver's last 4xx reply>)".
_EXPIRY = re.compile(r"\[internal\][^(]*(?:message timeout|max time)", re.IGNORECASE)
_LAST_TRANSFAIL = re.compile(r"\(last transfail:\s*(.*)\)\s*$", re.IGNORECASE | re.DOTALL)


class SparkPostConverter(Converter):
    name = "sparkpost"

    def feed(self, text: str) -> list[Result]:
        """One webhook batch (a JSON array), or a single ``{"msys": ...}`` item."""
        if not text.strip():
            return []
        data = json_units(text, "batch")
        if isinstance(data, Bad):
            return [data]
        if isinstance(data, dict):
            return _results(data, text)
        if not isinstance(data, list):
            return [bad(text, "batch: not a JSON array of webhook events")]
        results: list[Result] = []
        for item in data:
            results += self.convert_item(item)
        return results

    def convert_item(self, item: Any) -> list[Result]:
        """One element of a batch: never raises, always at least one result."""
        return _results(item, None)


CONVERTER = SparkPostConverter


def _results(item: Any, text: str | None) -> list[Result]:
    """The item's result; a bad item keeps its own text when there is one."""
    try:
        return [_convert(item)]
    except AdapterError as exc:
        return [bad(_raw(item) if text is None else text, str(exc))]


def _convert(item: Any) -> Result:
    if not isinstance(item, dict):
        raise AdapterError("item: not a JSON object")
    msys = item.get("msys")
    if not isinstance(msys, dict):
        raise AdapterError("msys: missing or not an object")
    if not msys:
        return Skip("ping")
    if len(msys) != 1:
        raise AdapterError("msys: holds more than one event")
    (cls, ev), *_ = msys.items()
    if cls == "relay_message":  # an inbound message relayed to the customer
        return Skip("relay_message")
    if not isinstance(ev, dict):
        raise AdapterError("msys: the event is not an object")
    kind = ev.get("type")
    if not isinstance(kind, str):
        raise AdapterError("type: missing or not a string")
    if kind in SKIPPED:
        return Skip(kind)
    handler = _HANDLERS.get(kind)
    if handler is None:
        return Skip("unknown")
    return handler(ev)


def _raw(item: Any, canonical: bool = False) -> str:
    """JSON text of a value, even a hostile one; ``canonical``: keys sorted."""
    try:
        return json.dumps(item, default=str, sort_keys=canonical)
    except (ValueError, TypeError, RecursionError):
        return "<not printable>"


# --- fields -------------------------------------------------------------------------


def _text(ev: dict[str, Any], name: str) -> str | None:
    """A string field (numbers too: SparkPost ids are sometimes numbers); empty → None."""
    value = ev.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise AdapterError(f"{name}: not a string")
    return str(value)


def _count(ev: dict[str, Any], name: str) -> int | None:
    value = ev.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= LARGEST_COUNT:
        raise AdapterError(f"{name}: not a count")
    return value


def _event_time(ev: dict[str, Any]) -> int:
    """``timestamp``: epoch seconds (a string or a number) or ISO 8601 → epoch ms."""
    value = ev.get("timestamp")
    seconds: float
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise AdapterError("timestamp: neither epoch seconds nor ISO 8601") from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            seconds = parsed.timestamp()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value
    else:
        raise AdapterError("timestamp: missing or not a time")
    if not (math.isfinite(seconds) and 0 <= seconds <= LARGEST_SECONDS):
        raise AdapterError("timestamp: out of range")
    return round(seconds * 1000)


def _common(ev: dict[str, Any], kind: str) -> dict[str, Any]:
    recipient = normalise_recipient(ev.get("raw_rcpt_to") or ev.get("rcpt_to"))
    transmission = _text(ev, "transmission_id")
    message_id = _text(ev, "message_id")
    if message_id is None:
        if transmission is None:
            raise AdapterError("message_id: missing, and no transmission_id either")
        message_id = message_key(transmission, recipient, shared=True)
    vendor_id = _text(ev, "event_id")
    # SparkPost's own event id; the record's content when an event has none.
    event_id = (
        stable_id(VENDOR, _raw(ev, canonical=True))
        if vendor_id is None
        else f"{VENDOR}:{vendor_id}"
    )
    return {
        "event_id": event_id,
        "event_time": _event_time(ev),
        "delivery_id": _text(ev, "campaign_id") or transmission or FALLBACK_DELIVERY,
        "message_id": message_id,
        "recipient": recipient,
        "kind": kind,
    }


def _sending_ip(ev: dict[str, Any]) -> str | None:
    return _text(ev, "sending_ip") or _text(ev, "ip_pool")


def _split_reply(text: str | None) -> tuple[int | None, str | None]:
    """The reply code and enhanced status that start a reply text, if they do."""
    match = _REPLY.match(text or "")
    if match is None:
        return None, None
    return int(match[1]), match[2]


def _reply(ev: dict[str, Any]) -> dict[str, Any]:
    """The remote reply: ``error_code`` and the unredacted ``raw_reason``."""
    text = _text(ev, "raw_reason") or _text(ev, "reason")
    code = ev.get("error_code")
    smtp_code = None
    if code is not None and code != "":
        if isinstance(code, str) and code.strip().isdecimal():
            code = int(code)
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 999:
            raise AdapterError("error_code: not a reply code")
        smtp_code = code
    text_code, status = _split_reply(text)
    return {
        "smtp_code": smtp_code if smtp_code is not None else text_code,
        "enhanced_status": status,
        "diagnostic": text,
    }


def _origin(ev: dict[str, Any], reply: dict[str, Any]) -> str | None:
    """Who decided a delay or a bounce: the receiver (None), Momentum itself (local), or
    nobody because no server answered (connection)."""
    text = reply["diagnostic"] or ""
    internal = INTERNAL in text and OOB not in text
    if internal or _text(ev, "error_code") is None:
        no_answer = _text(ev, "bounce_class") in CONNECTION_CLASSES
        if no_answer or _CONNECTION_TEXT.search(text):
            return CONNECTION
    return LOCAL if internal else None


def _attempt(ev: dict[str, Any]) -> int | None:
    """The failed attempt's number: ``num_retries`` counts the failures before it."""
    retries = _count(ev, "num_retries")
    return None if retries is None else min(retries + 1, LARGEST_COUNT)


# --- one function per event type ----------------------------------------------------


def _send(kind: str) -> Callable[[dict[str, Any]], Result]:
    def convert(ev: dict[str, Any]) -> Result:
        event = _common(ev, kind)
        event.update(sending_ip=_sending_ip(ev), campaign_id=_text(ev, "campaign_id"))
        return Event("send", event)

    return convert


def _delay(ev: dict[str, Any]) -> Result:
    event = _common(ev, "deferred")
    reply = _reply(ev)
    event.update(reply)
    event.update(
        attempt=_attempt(ev),
        sending_ip=_sending_ip(ev),
        origin=_origin(ev, reply),
        vendor_class=_text(ev, "bounce_class"),
    )
    return Event("retry", event)


def _bounce(ev: dict[str, Any]) -> Result:
    reply = _reply(ev)
    if reply["diagnostic"] and _EXPIRY.search(reply["diagnostic"]):
        return _expired(ev, reply["diagnostic"])
    event = _common(ev, "sync")
    event.update(reply)
    local = _text(ev, "bounce_class") == ADMIN_FAILURE_CLASS
    event.update(
        attempt=_attempt(ev),
        sending_ip=_sending_ip(ev),
        origin=LOCAL if local else _origin(ev, reply),
        vendor_class=_text(ev, "bounce_class"),
    )
    return Event("bounce", event)


def _expired(ev: dict[str, Any], text: str) -> Result:
    """Given up after retries: the reply is the receiver's last one, when the text holds
    it, never Momentum's own "message timeout" line."""
    event = _common(ev, "expired")
    last = _LAST_TRANSFAIL.search(text)
    if last is not None:
        code, status = _split_reply(last[1])
        reply = {"smtp_code": code, "enhanced_status": status, "diagnostic": last[1]}
        event.update(reply)
        internal = INTERNAL in last[1]
        if internal or code is None:
            event["origin"] = CONNECTION if _CONNECTION_TEXT.search(last[1]) else LOCAL
    event.update(
        attempt=_count(ev, "num_retries"),
        sending_ip=_sending_ip(ev),
        vendor_class=_text(ev, "bounce_class"),
    )
    return Event("retry", event)


def _out_of_band(ev: dict[str, Any]) -> Result:
    event = _common(ev, "async")
    event.update(_reply(ev))
    event.update(sending_ip=_sending_ip(ev), vendor_class=_text(ev, "bounce_class"))
    return Event("bounce", event)


def _complaint(ev: dict[str, Any]) -> Result:
    event = _common(ev, "complaint")
    event["sending_ip"] = _sending_ip(ev)
    return Event("bounce", event)


def _local_failure(ev: dict[str, Any]) -> Result:
    event = _common(ev, "sync")
    event.update(_reply(ev))
    event.update(sending_ip=_sending_ip(ev), origin=LOCAL, vendor_class=_text(ev, "bounce_class"))
    return Event("bounce", event)


_HANDLERS: dict[str, Callable[[dict[str, Any]], Result]] = {
    "injection": _send("relayed"),
    "delivery": _send("delivered"),
    "delay": _delay,
    "bounce": _bounce,
    "out_of_band": _out_of_band,
    "spam_complaint": _complaint,
    **dict.fromkeys(LOCAL_TYPES, _local_failure),
}
