"""The view updater against the real broker and Redis: tombstones on the status and address
topics (null value, ``version`` and ``event_time`` headers, as the workers write them)
delete the views; a late record behind a tombstone stays out; a reborn key comes back;
the output consumer yields tombstones with a null value."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from streams.pipeline.topics import Topic
from streams.runtime.codec import Codec
from streams.runtime.config import Settings
from streams.serving.consumer import OutputConsumer, Record, fold_latest
from streams.serving.views import ViewStore, ViewUpdater

pytestmark = [pytest.mark.broker, pytest.mark.redis]

RETIRED = "gone@example.org"
KEPT = "kept@example.org"


def _status(mid: str, version: int, event_time: int, status: str = "sent") -> dict[str, Any]:
    return {
        "event_id": f"{mid}:{version}",
        "event_time": event_time,
        "message_id": mid,
        "delivery_id": "D1",
        "status": status,
        "version": version,
    }


def _address(address: str, version: int, event_time: int, state: str) -> dict[str, Any]:
    return {
        "event_id": f"{address}:{version}",
        "event_time": event_time,
        "address": address,
        "state": state,
        "version": version,
    }


class Topics:
    """Writes records and tombstones to a prefix's output topics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.codec = Codec.from_settings(settings)
        self.producer = Producer(
            {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka_client_config()}
        )
        self.count = 0

    def record(self, name: str, key: str, value: dict[str, Any]) -> None:
        topic = self.settings.topic(name)
        raw = self.codec.encode(name, value, topic)
        self.producer.produce(topic, key=key.encode(), value=raw)
        self.count += 1

    def tombstone(self, name: str, key: str, version: int, event_time: int) -> None:
        headers = [("version", str(version).encode()), ("event_time", str(event_time).encode())]
        self.producer.produce(
            self.settings.topic(name), key=key.encode(), value=None, headers=headers
        )
        self.count += 1

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


def _until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the view updater did not catch up"
        time.sleep(0.2)


def test_tombstones_on_the_topics_retire_the_views(make_settings) -> None:
    settings = make_settings()
    store = ViewStore.from_settings(settings)
    topics = Topics(settings)
    topics.record(Topic.STATUS, "M1", _status("M1", 1, 1_000))
    topics.tombstone(Topic.STATUS, "M1", 1, 2_000)
    topics.record(Topic.STATUS, "M1", _status("M1", 1, 1_500))  # late: stays out
    topics.record(Topic.STATUS, "M2", _status("M2", 1, 1_000))
    topics.record(Topic.ADDRESS, RETIRED, _address(RETIRED, 2, 1_000, "quarantined"))
    topics.tombstone(Topic.ADDRESS, RETIRED, 2, 2_000)
    topics.record(Topic.ADDRESS, KEPT, _address(KEPT, 1, 1_000, "valid"))
    topics.flush()
    updater = ViewUpdater(settings, store)
    thread = threading.Thread(target=updater.run, daemon=True)
    thread.start()
    try:
        _until(lambda: updater.applied >= topics.count)
        assert store.read("msg", "M1") is None
        assert store.read("msg", "M2")["status"] == "sent"
        assert store.read("addr", RETIRED) is None
        assert store.is_listed(RETIRED) is None
        assert store.client.zrange(store.index_key("quarantined"), 0, -1) == []
        marker = {"event_time": "2000", "version": "2"}
        assert store.client.hgetall(store.gone_key("addr", RETIRED)) == marker
        assert store.client.ttl(store.key("addr", KEPT)) > 0
        assert store.client.ttl(store.key("msg", "M2")) > 0

        topics.record(Topic.STATUS, "M1", _status("M1", 2, 3_000, "taken_into_account"))
        topics.flush()
        _until(lambda: store.read("msg", "M1") is not None)
        assert store.read("msg", "M1")["status"] == "taken_into_account"
    finally:
        updater.stop()
        thread.join(10)
        keys = list(store.client.scan_iter(match=f"{store.prefix}:*"))
        if keys:
            store.client.delete(*keys)

    # A reader folding the topic into the latest state per key drops the retired one.
    latest: dict[str, dict[str, Any]] = {}
    records: list[Record] = []
    deadline = time.monotonic() + 60
    with OutputConsumer(settings, Topic.ADDRESS) as consumer:
        while len(records) < 3 and time.monotonic() < deadline:
            records += consumer.records(idle_timeout=1.0, max_wait=2.0)
    for record in records:
        fold_latest(latest, record, "address")
    assert set(latest) == {KEPT}
    (tomb,) = [r for r in records if r.value is None]
    assert tomb.key == RETIRED.encode()
    assert dict(tomb.headers) == {"version": b"2", "event_time": b"2000"}
