"""Records as the MTAs post them, written for these tests after the vendors' published
shapes (our own values, no copied samples):

- SparkPost / Momentum webhook events: SparkPost/support-docs
  ``articles/api/sparkpost-event-metrics-definitions.md`` (fields, string values, epoch
  seconds as a string) and the batch framing ``[{"msys": {"message_event": {...}}}]``.
- KumoMTA log records: KumoCorp/kumomta ``docs/reference/log_record.md`` (type, id,
  recipient, queue, site, response {code, enhanced_code, content, command}, timestamp,
  egress_source...), as its TSA publisher posts them to ``/publish_log_v1``.
"""

from __future__ import annotations

import time
from typing import Any

SPARKPOST_TYPES = (
    "injection",
    "delivery",
    "bounce",
    "delay",
    "open",
    "policy_rejection",
    "out_of_band",
    "spam_complaint",
)

_REPLIES = {
    "bounce": ("550", "10", "550 5.1.1 <{r}>: Recipient address rejected: User unknown"),
    "delay": ("452", "22", "452 4.2.2 The email account that you tried to reach is over quota"),
    "policy_rejection": ("554", "25", "554 5.7.1 Message generation rejected"),
    "out_of_band": ("550", "10", "550 5.1.1 [oob] The mailbox of <{r}> does not exist"),
}


def now_s(offset: int = 0) -> int:
    return int(time.time()) - 3600 + offset


def sparkpost_event(kind: str, n: int, tag: str, at: int | None = None) -> dict[str, Any]:
    """One webhook batch element of type ``kind`` for recipient ``n`` of campaign ``tag``."""
    rcpt = f"sp{n}.{tag}@example.com"
    event: dict[str, Any] = {
        "type": kind,
        "event_id": f"{tag}{n:06d}{SPARKPOST_TYPES.index(kind)}",
        "timestamp": str(at if at is not None else now_s(n % 600)),
        "message_id": f"{tag}-msg-{n:06d}",
        "transmission_id": f"{tag}-tx",
        "campaign_id": f"campaign-{tag}",
        "rcpt_to": rcpt,
        "raw_rcpt_to": rcpt,
        "recipient_domain": "example.com",
        "routing_domain": "example.com",
        "sending_ip": "192.0.2.25",
        "ip_pool": "default",
        "num_retries": "0",
        "queue_time": "1200",
        "subaccount_id": 0,
        "rcpt_meta": {},
        "rcpt_tags": [],
    }
    if kind in _REPLIES:
        code, klass, reason = _REPLIES[kind]
        event.update(error_code=code, bounce_class=klass, raw_reason=reason.format(r=rcpt))
        event["reason"] = event["raw_reason"]
    if kind == "spam_complaint":
        event.update(fbtype="abuse", report_by="fbl@isp.example", report_to="fbl@example.com")
    category = "track_event" if kind in ("open", "click") else "message_event"
    return {"msys": {category: event}}


def sparkpost_batch(count: int, tag: str) -> list[dict[str, Any]]:
    """``count`` events: each recipient injected, then delivered, bounced, delayed or
    opened."""
    out = []
    for n in range(count):
        kind = ("delivery", "bounce", "delay", "delivery", "open")[(n // 2) % 5]
        out.append(sparkpost_event("injection" if n % 2 == 0 else kind, n // 2, tag))
    return out


def kumo_record(kind: str, n: int, tag: str, at: int | None = None) -> dict[str, Any]:
    """One KumoMTA log record of type ``kind`` for recipient ``n`` of campaign ``tag``."""
    rcpt = f"km{n}.{tag}@example.net"
    codes = {
        "Reception": (250, (2, 0, 0), "OK", ""),
        "Delivery": (250, (2, 0, 0), "OK ids=8a5b", "site"),
        "TransientFailure": (
            421,
            (4, 7, 0),
            "[TSS04] Messages from 192.0.2.30 temporarily deferred due to unexpected volume",
            "site",
        ),
        "Bounce": (550, (5, 1, 1), "5.1.1 <{r}>: user does not exist", "site"),
        "Expiration": (
            551,
            (5, 4, 7),
            "Next delivery time would be at 2026-01-02 exceeds expiry",
            "",
        ),
    }
    code, (cls, subject, detail), content, site = codes[kind]
    at = at if at is not None else now_s(n % 600)
    return {
        "type": kind,
        "id": f"{tag}{n:026d}"[-32:],
        "sender": "bounces@sender.example",
        "recipient": rcpt,
        "queue": f"campaign-{tag}:tenant@example.net",
        "site": "pool0->(mx1|mx2).example.net" if site else "",
        "size": 2048,
        "response": {
            "code": code,
            "enhanced_code": {"class": cls, "subject": subject, "detail": detail},
            "content": content.format(r=rcpt),
            "command": "." if site else None,
        },
        "peer_address": {"name": "mx1.example.net", "addr": "198.51.100.7"} if site else None,
        "timestamp": at,
        "created": at - 5,
        "num_attempts": 1 if kind != "Reception" else 0,
        "bounce_classification": "Uncategorized",
        "egress_pool": "pool0",
        "egress_source": "source0",
        "feedback_report": None,
        "meta": {},
        "headers": {},
        "delivery_protocol": "ESMTP" if site else None,
        "reception_protocol": "ESMTP" if kind == "Reception" else None,
        "nodeid": "557f3ad4-2c8c-11ee-976e-782b46e3ff9e",
    }


def kumo_records(count: int, tag: str) -> list[dict[str, Any]]:
    """``count`` records: each recipient received, then delivered or failed."""
    out = []
    for n in range(count):
        kind = ("Delivery", "TransientFailure", "Bounce", "Delivery", "Expiration")[(n // 2) % 5]
        out.append(kumo_record("Reception" if n % 2 == 0 else kind, n // 2, tag))
    return out
