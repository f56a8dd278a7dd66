"""``FirstSeen``, the benchmarks' follower of an output topic, against the real broker: it
starts at the topic's end and notes every key produced after that, on every partition, at
the time its producer stamped it. The embedded broker reports a partition's end as the
start of its last record batch, so part of that batch may be seen too
(docs/embedded-broker.md)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from streams.pipeline.topics import Topic
from streams.runtime.config import Settings
from streams.testing.latency import FirstSeen

pytestmark = pytest.mark.broker


def _produce(settings: Settings, keys: list[str], batch: int = 10_000, **options: int) -> None:
    producer = Producer(
        {"bootstrap.servers": settings.bootstrap_servers, "batch.num.messages": batch}
    )
    for key in keys:
        producer.produce(settings.topic(Topic.STATUS), key=key.encode(), value=b"x", **options)
    assert producer.flush(30) == 0


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
    assert all(seen <= time.time() for seen in follower.seen.values())


def test_notes_the_time_the_producer_stamped(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    stamp_ms = int(time.time() * 1000) - 5_000  # written 5 s before it can be read
    with FirstSeen(settings, Topic.STATUS) as follower:
        _produce(settings, ["stamped"], timestamp=stamp_ms)
        follower.wait_for({"stamped"}, timeout=30)
    assert follower.seen["stamped"] == stamp_ms / 1000


def test_follows_the_end_of_a_long_partition(make_settings: Callable[..., Settings]) -> None:
    # The embedded broker's read near the end of a partition of many batches (10,000 here)
    # outlasts a short fetch wait, and such a fetch came back empty every time: the bench's
    # latency phase saw none of its status records.
    settings = make_settings(partitions=1)
    _produce(settings, [f"old-{i}" for i in range(100_000)], batch=10)
    after = [f"after-{i}" for i in range(20)]
    with FirstSeen(settings, Topic.STATUS) as follower:
        _produce(settings, after)
        follower.wait_for(set(after), timeout=30)
    assert set(after) <= set(follower.seen)


def test_missing_topic_is_named(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(create_topics=False)
    with pytest.raises(RuntimeError, match=settings.topic(Topic.STATUS)):
        FirstSeen(settings, Topic.STATUS).__enter__()
