"""``FirstSeen``, the benchmarks' follower of an output topic, against the real broker: it
starts at the topic's end and notes every key produced after that, on every partition.
The embedded broker reports a partition's end as the start of its last record batch, so
part of that batch may be seen too (docs/embedded-broker.md)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from streams.pipeline.topics import Topic
from streams.runtime.config import Settings
from streams.testing.latency import FirstSeen

pytestmark = pytest.mark.broker


def _produce(settings: Settings, keys: list[str]) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for key in keys:
        producer.produce(settings.topic(Topic.STATUS), key=key.encode(), value=b"x")
    assert producer.flush(10) == 0


def test_follows_from_the_end(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    before = [f"before-{i}" for i in range(50)]
    after = [f"after-{i}" for i in range(200)]
    _produce(settings, before)
    with FirstSeen(settings, Topic.STATUS) as follower:
        _produce(settings, after)
        follower.wait_for(set(after), timeout=30)
    assert set(after) <= set(follower.seen)
    assert set(follower.seen) - set(after) < set(before)
    assert all(seen <= time.monotonic() for seen in follower.seen.values())


def test_missing_topic_is_named(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(create_topics=False)
    with pytest.raises(RuntimeError, match=settings.topic(Topic.STATUS)):
        FirstSeen(settings, Topic.STATUS).__enter__()
