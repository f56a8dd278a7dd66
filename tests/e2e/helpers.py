"""Shared helpers of the end-to-end tests (the event builder is in tests/factories.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from streams.runtime.config import Settings
from streams.runtime.producer import EventProducer
from streams.serving.consumer import OutputConsumer, fold_latest
from streams.testing.sample import Event


def collect(
    settings: Settings,
    topic: str,
    done: Callable[[dict[str, dict[str, Any]]], bool],
    key_field: str,
    timeout: float = 90.0,
) -> dict[str, dict[str, Any]]:
    """Newest version per key of ``topic`` once ``done(latest)`` holds (or timeout)."""
    latest: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    with OutputConsumer(settings, topic) as consumer:
        while time.monotonic() < deadline:
            for record in consumer.records(idle_timeout=1.0, max_wait=2.0):
                fold_latest(latest, record, key_field)
            if done(latest):
                break
    return latest


def collect_all(settings: Settings, topic: str, count: int, timeout: float = 90.0) -> list[Any]:
    """The first ``count`` records of ``topic`` (fewer if the timeout passes)."""
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    with OutputConsumer(settings, topic) as consumer:
        while time.monotonic() < deadline and len(out) < count:
            out.extend(consumer.records(idle_timeout=1.0, max_wait=2.0))
    return out


def produce_paced(
    settings: Settings, events: list[Event], seconds: float, chunk: int, flush: bool = False
) -> None:
    """Send ``events`` spread evenly over ``seconds``, pausing after every ``chunk``
    (flushing first when ``flush``, so the records are on the broker during the pause)."""
    pause = seconds / max(1, len(events) / chunk)
    with EventProducer(settings) as producer:
        for i, (family, ev) in enumerate(events):
            producer.send(family, ev)
            if i % chunk == chunk - 1:
                if flush:
                    producer.flush()
                time.sleep(pause)
