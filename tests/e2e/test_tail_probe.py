"""The probe that tells an idle input partition from one whose records are not read yet,
against the real broker (whose high watermark is the base offset of the last batch)."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer
from faust.types import TP

from streams.runtime.progress import TailProbe

# The broker alone: no worker, no Redis.
pytestmark = pytest.mark.broker


def test_the_probe_finds_the_true_end_past_a_short_high_watermark(make_settings):
    settings = make_settings()
    topic = settings.topic("send")
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 20})
    for batch in (5, 3):  # two batches: offsets 0-4 and 5-7
        for _ in range(batch):
            producer.produce(topic, b"x", partition=0)
        producer.flush()
    probe = TailProbe(settings)
    tp, empty = TP(topic, 0), TP(topic, 1)
    for offset in (0, 5, 6, 7):
        assert probe.ends({tp: offset, empty: 0}) == {empty: 0}, offset
    assert probe.ends({tp: 8, empty: 0}) == {tp: 8, empty: 0}
    assert probe.ends({}) == {}


def test_the_probe_finds_the_end_of_a_long_partition(make_settings):
    # The probe's fetches wait 10 ms, and the embedded broker can answer a fetch that waits
    # less than its read of a long partition with nothing. Past the end of 10,000 batches
    # the probe must still see the end, or an idle input would hold the control step back.
    settings = make_settings(partitions=1)
    topic = settings.topic("send")
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "batch.num.messages": 10})
    for _ in range(100_000):
        producer.produce(topic, b"x", partition=0)
    assert producer.flush(60) == 0
    probe = TailProbe(settings)
    tp = TP(topic, 0)
    assert probe.ends({tp: 100_000}) == {tp: 100_000}
    assert probe.ends({tp: 99_999}) == {}
