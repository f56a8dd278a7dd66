"""The topics of the pipeline, declared once: logical name, schema and cleanup policy."""

from __future__ import annotations

from dataclasses import dataclass

from streams.runtime.config import Settings


@dataclass(frozen=True)
class TopicSpec:
    name: str  # logical name; the full name is ``<prefix>.<name>``
    schema: str | None  # key into streams.runtime.codec.SCHEMA_FILES; None for internal JSON topics
    compacted: bool
    doc: str


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("send", "send", False, "Input: relayed / delivered, keyed by recipient"),
    TopicSpec("bounce", "bounce", False, "Input: sync / async bounces, complaints"),
    TopicSpec("retry", "retry", False, "Input: deferred / expired"),
    TopicSpec("status", "status", True, "Output: message status changes, keyed by message id"),
    TopicSpec("address", "address", True, "Output: address health, keyed by address"),
    TopicSpec("kpi", "kpi", False, "Output: delivery KPIs, keyed by delivery id"),
    TopicSpec("reputation", "reputation", False, "Output: rolling reputation windows"),
    TopicSpec("throttle", "throttle", True, "Control: throttle settings, keyed by group/domain"),
    TopicSpec("dlq", "dlq", False, "Dead letters: rejected input with the reason"),
    TopicSpec("kpi-part", None, False, "Internal: per-partition KPI partials, by delivery id"),
    TopicSpec("signal", None, False, "Internal: reputation signals and clock ticks, by group"),
    TopicSpec("clock", None, False, "Internal: event-time clock ticks, to every partition"),
)

INPUT_TOPICS: tuple[str, ...] = ("send", "bounce", "retry")


def topic_names(settings: Settings) -> dict[str, str]:
    """Logical name → full topic name."""
    return {spec.name: settings.topic(spec.name) for spec in TOPICS}


def input_streams(partitions: int) -> list[str]:
    """Every input stream (``family:partition``) a control partition waits for, sends
    first: at equal event times the control step counts an attempt before its outcome."""
    return [f"{family}:{p}" for family in INPUT_TOPICS for p in range(partitions)]
