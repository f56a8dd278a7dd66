"""KumoMTA log records → input events.

A record is one JSON object as kumod writes it: a line of its local logs (zstd segments,
decompressed by the tool that reads them), the body its log hook or its TSA publisher
posts. ``recipient`` is a string, or an array when one record covers several recipients;
each recipient gets its own event. docs/adapters/kumomta.md has the table.

``site_seen`` tells, for a record of a delivery attempt, which egress source and site
(``source->mx-site``, exactly the record's ``site``) served which recipient domain: the
names KumoMTA's suspensions are published under.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams.adapters import kumomta_fields as f
from streams.adapters.base import (
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

VENDOR = "kumomta"
# Records with no delivery status: our listener's own rejections, queue moves, the
# explanations of scheduled-queue waits.
SKIPPED = frozenset(
    {"Rejection", "Delayed", "AdminRebind", "DeferredInjectionRebind", "XferIn", "XferOut"}
)
# Records of delivery attempts to a remote site.
SITE_TYPES = frozenset({"Delivery", "TransientFailure", "Bounce"})
# The reception protocol of the messages that carry log records (log hooks, the TSA
# publisher): records about them are kumod's plumbing, not mail.
LOG_RECORD_PROTOCOL = "LogRecord"


@dataclass(frozen=True, slots=True)
class SiteSeen:
    """A delivery attempt's path: egress source, site (the record's ``site``: the name
    kumod's suspensions use), recipient domain and the MX host that answered, if any."""

    egress_source: str
    site: str
    domain: str
    mx_host: str | None


class KumoMtaConverter(Converter):
    name = "kumomta"

    def feed(self, text: str) -> list[Result]:
        """One log record as JSON text (an array of records is taken too)."""
        if not text.strip():
            return []
        data = json_units(text, "record")
        if isinstance(data, Bad):
            return [data]
        if isinstance(data, list):
            results: list[Result] = []
            for obj in data:
                results += self.convert_record(obj)
            return results
        return _results(data, text)

    def convert_record(self, obj: Any) -> list[Result]:
        """One parsed record: never raises, always at least one result."""
        return _results(obj, None)


CONVERTER = KumoMtaConverter


def _results(obj: Any, text: str | None) -> list[Result]:
    """The record's results; a bad record keeps its own text when there is one."""
    try:
        return _convert(obj)
    except AdapterError as exc:
        return [bad(f.raw(obj, canonical=False) if text is None else text, str(exc))]


def site_seen(record: dict[str, Any]) -> SiteSeen | None:
    """The egress source, site and recipient domain of a delivery attempt, or None for any
    other record (or one too broken to tell)."""
    if not isinstance(record, dict) or record.get("reception_protocol") == LOG_RECORD_PROTOCOL:
        return None
    kind = record.get("type")
    if not isinstance(kind, str) or kind not in SITE_TYPES:
        return None
    site = record.get("site")
    if not isinstance(site, str) or not site.strip():
        return None
    try:
        recipient = f.recipients(record)[0]
        mx_host = f.mx_host(record)
    except AdapterError:
        return None
    local, at, domain = recipient.rpartition("@")
    domain = domain.strip().rstrip(".").lower()
    if not (local and at and domain):
        return None
    source = record.get("egress_source")
    if not isinstance(source, str) or not source:
        # The name kumod prefixed to the site, else the tsa-daemon's own fallback.
        source = site.partition("->")[0] if "->" in site else "unspecified"
    return SiteSeen(source, site, domain, mx_host)


def _convert(obj: Any) -> list[Result]:
    if not isinstance(obj, dict):
        raise AdapterError("record: not a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise AdapterError("type: missing or not a string")
    if obj.get("reception_protocol") == LOG_RECORD_PROTOCOL:
        return [Skip("log_hook")]
    if kind in SKIPPED:
        return [Skip(kind)]
    handler = _HANDLERS.get(kind)
    if handler is None:
        return [Skip("unknown")]
    return handler(obj)


def _events(
    obj: dict[str, Any],
    family: str,
    kind: str,
    *,
    recipients: list[str] | None = None,
    message: str | None = None,
    delivery_id: str | None = None,
    **fields: Any,
) -> list[Result]:
    """One event per recipient (the record's own unless given). The message id is the
    spool id plus the recipient: a spool id may cover several recipients, and kumod
    writes a one-recipient subset of them as a plain string, so one record alone cannot
    tell whether it does."""
    message = message or f.string(obj, "id")
    if message is None:
        raise AdapterError("id: missing")
    recipients = recipients or f.recipients(obj)
    event_time = f.event_time(obj)
    delivery_id = delivery_id or f.delivery_id(obj)
    identity = _identity(obj)
    return [
        Event(
            family,
            {
                "event_id": stable_id(VENDOR, identity, recipient),
                "event_time": event_time,
                "delivery_id": delivery_id,
                "message_id": message_key(message, recipient.lower(), shared=True),
                "recipient": recipient,
                "kind": kind,
                **fields,
            },
        )
        for recipient in recipients
    ]


def _identity(obj: dict[str, Any]) -> str:
    """The record fields that tell one record from another, for its event ids: the same
    record converted twice gives the same ids."""
    response = obj.get("response")
    reply = [response.get("code"), response.get("content")] if isinstance(response, dict) else None
    return f.raw(
        [
            obj.get(name)
            for name in ("type", "id", "timestamp", "event_time", "num_attempts", "site")
        ]
        + [reply]
    )


def _attempt(obj: dict[str, Any]) -> int | None:
    """The failed attempt's number: ``num_attempts`` counts those made before it."""
    done = f.u16(obj, "num_attempts", "num_attempts")
    return None if done is None else done + 1


def _class(obj: dict[str, Any]) -> str | None:
    value = obj.get("bounce_classification")
    return value if isinstance(value, str) and value else None


# --- one function per record type ---------------------------------------------------


def _reception(obj: dict[str, Any]) -> list[Result]:
    return _events(obj, "send", "relayed", campaign_id=f.campaign(obj))


def _delivery(obj: dict[str, Any]) -> list[Result]:
    return _events(
        obj,
        "send",
        "delivered",
        sending_ip=f.string(obj, "egress_source"),
        mx_host=f.mx_host(obj),
        campaign_id=f.campaign(obj),
    )


def _failure(family: str, kind: str) -> Callable[[dict[str, Any]], list[Result]]:
    """TransientFailure and Bounce: the remote reply, unless kumod wrote it itself."""

    def convert(obj: dict[str, Any]) -> list[Result]:
        code, status, content = f.response(obj)
        return _events(
            obj,
            family,
            kind,
            **f.reply(code, status, content),
            attempt=_attempt(obj),
            mx_host=f.mx_host(obj),
            sending_ip=f.string(obj, "egress_source"),
            origin=f.origin(content),
            vendor_class=_class(obj),
        )

    return convert


def _expiration(obj: dict[str, Any]) -> list[Result]:
    # Its "551 5.4.7 Next delivery time ..." is kumod's, not a server's: no reply, so the
    # failure reason is the last real one the message met.
    return _events(
        obj,
        "retry",
        "expired",
        attempt=f.u16(obj, "num_attempts", "num_attempts"),
        vendor_class=_class(obj),
    )


def _admin_bounce(obj: dict[str, Any]) -> list[Result]:
    reply = f.reply(*f.response(obj))
    return _events(obj, "bounce", "sync", **reply, origin=LOCAL, vendor_class=_class(obj))


def _oob(obj: dict[str, Any]) -> list[Result]:
    reply = f.reply(*f.response(obj))
    return _events(
        obj, "bounce", "async", **reply, mx_host=f.mx_host(obj), vendor_class=_class(obj)
    )


def _feedback(obj: dict[str, Any]) -> list[Result]:
    """A received ARF report: the complainer and the original message are in
    ``feedback_report`` (the trace header KumoMTA decoded from the returned message, else
    the report's Original-Rcpt-To), not in the record's own fields, which describe the
    report."""
    report = obj.get("feedback_report")
    if not isinstance(report, dict):
        raise AdapterError("feedback_report: missing or not an object")
    trace = report.get("supplemental_trace")
    trace = trace if isinstance(trace, dict) else {}
    named = trace.get("recipient")
    field = "feedback_report.supplemental_trace.recipient"
    if named is None or named == []:
        named = report.get("original_rcpto_to")
        field = "feedback_report.original_rcpto_to"
    values = named if isinstance(named, list) else [named]
    if not values or values == [None]:
        raise AdapterError(
            "feedback_report: names no recipient (supplemental_trace.recipient or "
            "original_rcpto_to)"
        )
    try:
        complainers = [normalise_recipient(v) for v in values]
    except AdapterError:
        raise AdapterError(f"{field}: not an address or a list of addresses") from None
    return _events(
        obj,
        "bounce",
        "complaint",
        recipients=complainers,
        message=_trace_text(trace, "message_id"),
        delivery_id=(
            _trace_text(trace, "campaign") or _trace_text(trace, "tenant") or f.FALLBACK_DELIVERY
        ),
    )


def _trace_text(trace: dict[str, Any], name: str) -> str | None:
    value = trace.get(name)
    return value if isinstance(value, str) and value else None


_HANDLERS: dict[str, Callable[[dict[str, Any]], list[Result]]] = {
    "Reception": _reception,
    "Delivery": _delivery,
    "TransientFailure": _failure("retry", "deferred"),
    "Bounce": _failure("bounce", "sync"),
    "Expiration": _expiration,
    "AdminBounce": _admin_bounce,
    "OOB": _oob,
    "Feedback": _feedback,
}
