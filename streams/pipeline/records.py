"""Every record the pipeline emits, shaped once: the output topics' values (status,
address, KPI, reputation, throttle), the internal ones (KPI partials, signals and input
progress on the signal topic), and the fields of a throttle setting that tools compare.

Output values are the Avro records of ``schemas/`` (see ``streams.pipeline.topics``);
internal values are JSON objects.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, NamedTuple

from streams.domain.control.mx_rules import MxRules
from streams.domain.control.reputation import ReputationRecord, Signal, signal_from_event
from streams.domain.control.throttle_state import ThrottleSetting
from streams.domain.recipient.delivery_kpi import KpiCounts
from streams.domain.recipient.message_status import MessageView
from streams.domain.types import Qualification
from streams.pipeline.topics import Topic

# A step's key-value state: a Faust table in the workers, a dict in ``replay``.
Store = MutableMapping[str, Any]

# What a reader of the throttle topic compares: every field but times and scope.
THROTTLE_FIELDS = (
    "key",
    "mode",
    "max_rate_per_hour",
    "max_connections",
    "max_messages_per_connection",
    "suspended_until",
    "reason",
    "version",
)


class Output(NamedTuple):
    """A record to send; ``value`` None is a tombstone, with its ``headers``."""

    topic: Topic
    key: str
    value: dict[str, Any] | None
    headers: tuple[tuple[str, bytes], ...] = ()


def tombstone(topic: Topic, key: str, version: int, time_ms: int) -> Output:
    """A key retired from its table: null value on its compacted topic. The headers say
    which version it ends and when, so that a reader can refuse an older record that
    comes after it (a replay, a late duplicate)."""
    return Output(
        topic,
        key,
        None,
        (("version", str(version).encode()), ("event_time", str(time_ms).encode())),
    )


def tombstone_fields(headers: Any) -> tuple[int, int] | None:
    """(version, event_time) of a tombstone's headers, or None when they are missing."""
    found = {k: v for k, v in headers or () if k in ("version", "event_time")}
    try:
        return int(found["version"]), int(found["event_time"])
    except (KeyError, ValueError, TypeError):
        return None


def status_record(
    mid: str,
    delivery_id: str,
    view: MessageView,
    version: int,
    now_ms: int,
    recipient: str | None = None,
) -> Output:
    """A message's status; ``recipient`` is the address of the event that made the change
    (None for a change time alone made: the message state does not keep it)."""
    return Output(
        Topic.STATUS,
        mid,
        {
            "event_id": f"{mid}:{version}",
            "event_time": now_ms,
            "message_id": mid,
            "delivery_id": delivery_id,
            "recipient": recipient,
            "status": view.status,
            "failure_type": view.failure_type,
            "failure_reason": view.failure_reason,
            "bounce_class": view.bounce_class,
            "rule": view.rule,
            "attempts": view.attempts,
            "next_attempt_time": view.next_attempt_time,
            "version": version,
        },
    )


def address_record(address: str, shown: dict[str, Any], version: int, now_ms: int) -> Output:
    return Output(
        Topic.ADDRESS,
        address,
        {
            "event_id": f"{address}:{version}",
            "event_time": now_ms,
            "address": address,
            **shown,
            "version": version,
        },
    )


def kpi_part_record(delivery_id: str, partition: int, rec: dict[str, Any]) -> Output:
    """A partition's KPI counts of one delivery (internal topic ``kpi-part``)."""
    return Output(
        Topic.KPI_PART,
        delivery_id,
        {"delivery_id": delivery_id, "partition": partition, "v": rec["v"], "c": rec["c"]},
    )


def kpi_record(delivery_id: str, c: KpiCounts, version: int, now_ms: int) -> dict[str, Any]:
    return {
        "event_id": f"{delivery_id}:{version}",
        "event_time": now_ms,
        "delivery_id": delivery_id,
        "to_deliver": c.to_deliver,
        "taken_into_account": c.taken_into_account,
        "sent": c.sent,
        "failed": c.failed,
        "failed_hard": c.failed_hard,
        "failed_soft": c.failed_soft,
        "pending": c.pending,
        "bounces_errors": c.bounces_errors,
        "success_pct": round(c.success_pct, 4),
        "version": version,
    }


class Source(NamedTuple):
    """The input a signal comes from: its stream (``family:partition``) and offset.

    A re-processed input (at-least-once, after a crash) emits its signal again, at a new
    offset of the signal topic; its source is the same, so it is not counted twice. The
    sequencer releases each stream's signals in offset order, so the highest source offset
    taken in per stream is enough to know what a key has seen."""

    stream: str
    offset: int

    @classmethod
    def of(cls, signal_record: dict[str, Any]) -> Source:
        stream, offset = signal_record["src"]
        return cls(str(stream), int(offset))


# The feedback step's hook: (family, event, qualification, source) → a signal record or None.
SignalHook = Callable[[str, dict[str, Any], Qualification | None, Source], Output | None]


def signal_output(rules: MxRules) -> SignalHook:
    """The FeedbackProcessor hook that turns events into signals keyed by provider group."""

    def make(
        family: str, event: dict[str, Any], q: Qualification | None, source: Source
    ) -> Output | None:
        signal = signal_from_event(family, event, q, rules)  # type: ignore[arg-type]
        if signal is None:
            return None
        return Output(Topic.SIGNAL, signal.group, signal_record(signal, source))

    return make


def signal_record(s: Signal, source: Source) -> dict[str, Any]:
    """A signal on the signal topic, with the input it comes from (``src``)."""
    q = s.qualification
    return {
        "src": [source.stream, source.offset],
        "t": s.time_ms,
        "id": s.event_id,
        "domain": s.domain,
        "group": s.group,
        "ip": s.sending_ip,
        "outcome": s.outcome,
        "attempt": s.attempt,
        "reply": s.reply,
        "q": None
        if q is None
        else [q.failure_type, q.failure_reason, q.bounce_class, q.rule, q.rate_limit],
    }


def signal_from_dict(d: dict[str, Any]) -> Signal:
    q = d["q"]
    return Signal(
        time_ms=d["t"],
        event_id=d["id"],
        domain=d["domain"],
        group=d["group"],
        sending_ip=d["ip"],
        outcome=d["outcome"],
        attempt=d["attempt"],
        reply=d["reply"],
        qualification=None if q is None else Qualification(q[0], q[1], q[2], q[3], q[4]),
    )


def progress_value(claims: dict[str, int]) -> dict[str, Any]:
    """Input progress on the signal topic: nothing below each time will come from each
    input stream (``family:partition``) any more."""
    return {"progress": claims}


def progress_claims(value: dict[str, Any]) -> dict[str, int] | None:
    """The claims of a progress record, or None for a signal."""
    claims = value.get("progress")
    return None if claims is None else dict(claims)


def clock_value(now_ms: int) -> dict[str, Any]:
    """A worker's event-time clock, spread to every partition (internal topic ``clock``)."""
    return {"now": now_ms}


def clock_time(value: dict[str, Any]) -> int:
    return int(value["now"])


def reputation_output(r: ReputationRecord) -> Output:
    return Output(
        Topic.REPUTATION,
        r.key,
        {
            "event_id": f"{r.key}:{r.time_ms}",
            "event_time": r.time_ms,
            "key": r.key,
            "scope": r.scope,
            "window_start": r.window_start_ms,
            "window_end": r.window_end_ms,
            "attempts": r.attempts,
            "delivered": r.delivered,
            "hard": r.hard,
            "soft": r.soft,
            "blocks": r.blocks,
            "rate_limited": r.rate_limited,
            "complaints": r.complaints,
            "score": float(r.score),
        },
    )


def throttle_output(s: ThrottleSetting) -> Output:
    return Output(Topic.THROTTLE, s.key, throttle_record(s))


def throttle_record(s: ThrottleSetting) -> dict[str, Any]:
    return {
        "event_id": f"{s.key}:{s.version}",
        "event_time": s.changed_at,
        "key": s.key,
        "scope": s.scope,
        "mode": s.mode,
        "max_rate_per_hour": s.max_rate_per_hour,
        "max_connections": s.max_connections,
        "max_messages_per_connection": s.max_messages_per_connection,
        "retry_interval_s": s.retry_interval_s,
        "suspended_until": s.suspended_until,
        "reason": s.reason,
        "version": s.version,
    }
