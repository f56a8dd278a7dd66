"""What the control agent keeps of a record it reads (streams.runtime.acks.ControlRecord):
acknowledged in a real faust consumer as the event would be, and smaller than it (the held
signals of a backlog are tens of thousands of them)."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

import faust
import pytest
from faust.events import Event
from faust.transport.drivers.aiokafka import ConsumerMessage
from faust.types import TP

from streams.runtime.acks import ControlRecord

TOPIC = "t.signal"
TP0 = TP(TOPIC, 0)
VALUE = b'{"k":"gmail","t":1796160000000,"src":["send-3",123456],"kind":"deferred"}'


@pytest.fixture
def app() -> faust.App:
    app = faust.App("control-record-test", broker="kafka://127.0.0.1:1")
    app.topics._acking_topics.add(TOPIC)  # as for a topic an agent reads
    return app


def _event(app: faust.App, offset: int) -> Event:
    key, value = bytes(bytearray(b"gmail.com")), bytes(bytearray(VALUE))  # each its own, as fetched
    msg = ConsumerMessage(TOPIC, 0, offset, 1796160000.0, 0, [], key, value, None, 9, 75, TP0)
    msg.incref()  # as the conductor does for the one channel that reads it
    return Event(app, key, value, [], msg)


def test_acknowledged_in_the_consumer_as_its_event_would_be(app: faust.App) -> None:
    consumer = app.consumer
    _event(app, 5).ack()
    rec = ControlRecord(_event(app, 6))
    assert (rec.topic, rec.partition, rec.offset, rec.tp) == (TOPIC, 0, 6, TP0)
    assert rec.value == VALUE and rec.key == b"gmail.com" and rec.timestamp == 1796160000.0
    assert rec.ack() is True and rec.acked
    assert rec.ack() is False  # once
    assert list(consumer._acked[TP0]) == [5, 6]


def test_leaves_the_consumers_unacknowledged_records_once_acknowledged(app: faust.App) -> None:
    consumer = app.consumer
    rec = ControlRecord(_event(app, 7))
    consumer._unacked_messages.add(rec)  # as faust tracks a message read
    assert rec in consumer._unacked_messages
    rec.ack()
    assert rec not in consumer._unacked_messages


def _bytes_kept(make: Callable[[int], Any], n: int = 2_000) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make(i) for i in range(n)]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(kept) == n
    return (after - before) / n


def test_keeps_a_few_hundred_bytes_less_than_the_event(app: faust.App) -> None:
    # The event's and message's own objects, whatever the value's size: about 320 bytes.
    event_bytes = _bytes_kept(lambda i: _event(app, 1_000 + i))
    record_bytes = _bytes_kept(lambda i: ControlRecord(_event(app, 1_000 + i)))
    print(f"kept per record: event {event_bytes:.0f} bytes, ControlRecord {record_bytes:.0f}")
    assert event_bytes - record_bytes >= 250
