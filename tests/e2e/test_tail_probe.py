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
