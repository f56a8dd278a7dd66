"""The topics of the pipeline, declared once: name, Avro schema, cleanup policy.

A topic's full name is ``<MTA_TOPIC_PREFIX>.<name>``; code names a topic by its ``Topic``
member (a ``str``, so it also serves as the logical name on records and in Redis keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Topic(StrEnum):
    SEND = "send"
    BOUNCE = "bounce"
    RETRY = "retry"
    OPERATOR = "operator"
    STATUS = "status"
    ADDRESS = "address"
    KPI = "kpi"
    REPUTATION = "reputation"
    THROTTLE = "throttle"
    DLQ = "dlq"
    KPI_PART = "kpi-part"
    SIGNAL = "signal"
    CLOCK = "clock"


@dataclass(frozen=True)
class TopicSpec:
    name: Topic
    schema: str | None  # the .avsc file stem in schemas/; None for internal JSON topics
    compacted: bool
    doc: str


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(Topic.SEND, "send_event", False, "Input: relayed / delivered, keyed by recipient"),
    TopicSpec(Topic.BOUNCE, "bounce_event", False, "Input: sync / async bounces, complaints"),
    TopicSpec(Topic.RETRY, "retry_event", False, "Input: deferred / expired"),
    TopicSpec(
        Topic.OPERATOR,
        "operator_event",
        False,
        "Input: operator actions on an address (lift, denylist, undenylist) with who and why",
    ),
    TopicSpec(Topic.STATUS, "status_change", True, "Output: message status, by message id"),
    TopicSpec(Topic.ADDRESS, "address_health", True, "Output: address health, by address"),
    TopicSpec(Topic.KPI, "delivery_kpi", False, "Output: delivery KPIs, by delivery id"),
    TopicSpec(Topic.REPUTATION, "domain_reputation", False, "Output: rolling reputation windows"),
    TopicSpec(Topic.THROTTLE, "throttle_setting", True, "Control: throttle settings, by key"),
    TopicSpec(Topic.DLQ, "dead_letter", False, "Dead letters: rejected input with the reason"),
    TopicSpec(Topic.KPI_PART, None, False, "Internal: per-partition KPI partials, by delivery"),
    TopicSpec(Topic.SIGNAL, None, False, "Internal: reputation signals and input progress"),
    TopicSpec(Topic.CLOCK, None, False, "Internal: event-time clock ticks, to every partition"),
)

# The input families whose events may be reputation signals, in the order the control
# step breaks ties at equal event times: its sequencer waits for these streams only.
SIGNAL_INPUTS: tuple[Topic, ...] = (Topic.SEND, Topic.BOUNCE, Topic.RETRY)
# Every input family the ingest step reads. Operator actions concern an address alone and
# are never a signal, so the control step does not wait for their streams.
INPUT_TOPICS: tuple[Topic, ...] = (*SIGNAL_INPUTS, Topic.OPERATOR)

# Logical name → .avsc file stem, for the topics whose records are Avro.
SCHEMA_FILES: dict[str, str] = {spec.name: spec.schema for spec in TOPICS if spec.schema}


def input_streams(partitions: int) -> list[str]:
    """Every input stream (``family:partition``) a control partition waits for, sends
    first: at equal event times the control step counts an attempt before its outcome."""
    return [f"{family}:{p}" for family in SIGNAL_INPUTS for p in range(partitions)]


def input_key(recipient: str) -> bytes:
    """The Kafka key of an input event: its recipient, lower-cased as the pipeline keys an
    address's state, so that ``Q@X.org`` and ``q@x.org`` land in the same partition."""
    return recipient.lower().encode()
