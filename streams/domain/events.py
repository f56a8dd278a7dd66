"""Typed shapes of the decoded input events (as fastavro returns them).

Times are integers in epoch milliseconds everywhere in the domain code; the Avro
decoder reads ``timestamp-millis`` fields as plain longs for that reason.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

Family = Literal["send", "bounce", "retry"]
SendKind = Literal["relayed", "delivered"]
BounceKind = Literal["sync", "async", "complaint"]
RetryKind = Literal["deferred", "expired"]
# Who decided a failure (optional ``origin`` of bounce and retry events; null is remote).
Origin = Literal["remote", "local", "connection"]
ORIGINS: tuple[Origin, ...] = ("remote", "local", "connection")


class _Common(TypedDict):
    event_id: str
    event_time: int  # epoch ms
    delivery_id: str
    message_id: str
    recipient: str


class SendEvent(_Common):
    kind: SendKind
    validity_seconds: NotRequired[int | None]
    sending_ip: NotRequired[str | None]
    mx_host: NotRequired[str | None]
    campaign_id: NotRequired[str | None]


class BounceEvent(_Common):
    kind: BounceKind
    smtp_code: NotRequired[int | None]
    enhanced_status: NotRequired[str | None]
    diagnostic: NotRequired[str | None]
    mx_host: NotRequired[str | None]
    sending_ip: NotRequired[str | None]
    attempt: NotRequired[int | None]
    origin: NotRequired[Origin | None]
    vendor_class: NotRequired[str | None]


class RetryEvent(_Common):
    kind: RetryKind
    attempt: NotRequired[int | None]
    next_attempt_time: NotRequired[int | None]  # epoch ms
    smtp_code: NotRequired[int | None]
    enhanced_status: NotRequired[str | None]
    diagnostic: NotRequired[str | None]
    mx_host: NotRequired[str | None]
    sending_ip: NotRequired[str | None]
    origin: NotRequired[Origin | None]
    vendor_class: NotRequired[str | None]


InputEvent = SendEvent | BounceEvent | RetryEvent

# An operator's action on an address: the one input family that is about no message.
OperatorFamily = Literal["operator"]
OPERATOR: OperatorFamily = "operator"
OperatorKind = Literal["lift", "denylist", "undenylist"]
OPERATOR_KINDS: tuple[OperatorKind, ...] = ("lift", "denylist", "undenylist")


class OperatorEvent(TypedDict):
    event_id: str
    event_time: int  # epoch ms, when the operator acted
    recipient: str
    kind: OperatorKind
    actor: str  # who: a person, an API token's name, a tool
    reason: NotRequired[str | None]  # why, in the operator's words


def is_remote_verdict(event: Any) -> bool:
    """A receiving server's reply, as opposed to the MTA's own doing (``local``: an
    administrative bounce, a message held by a suspension) or a connection that got no
    reply (``connection``: an outage). Only remote verdicts count against an address or
    a domain's reputation; a send event is always one."""
    return event.get("origin") in (None, "remote")
