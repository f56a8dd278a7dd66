"""End to end: messages leave the tables after their retention, with a tombstone on the
status topic and a marker in the table, which goes (a changelog deletion) one retention
later; time-driven changes due in the same tick still happen."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from factories import event

from streams.runtime.config import Settings
from streams.runtime.producer import EventProducer
from streams.testing.worker import WorkerProcess

from .helpers import collect, collect_all

pytestmark = [pytest.mark.broker, pytest.mark.e2e]

H = 3_600_000


def _tombstones(
    settings: Settings, topic: str, expect: set[str], timeout: float = 60.0
) -> dict[str, dict[str, bytes]]:
    """Keys deleted on a topic (records with no value), with their headers: read until
    every key of ``expect`` is deleted and then 3 s pass without a record (so that
    deletions written with them are in too), or until ``timeout``."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"{settings.app_id}-reader",
            "enable.auto.commit": False,
            **settings.kafka_client_config(),
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
    deleted: dict[str, dict[str, bytes]] = {}
    idle_since = time.monotonic()
    deadline = time.monotonic() + timeout
    try:
        # A quiet spell alone is no end: the first fetch, or the worker's changelog write,
        # may take longer than that on a slow machine.
        while time.monotonic() < deadline and not (
            expect <= deleted.keys() and time.monotonic() - idle_since >= 3.0
        ):
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error() is None:
                    idle_since = time.monotonic()
                    if msg.value() is None:
                        deleted[msg.key().decode().strip('"')] = dict(msg.headers() or [])
    finally:
        consumer.close()
    return deleted


def test_retention_deletes_final_messages_and_expiry_still_fires(make_settings, tmp_path):
    settings = make_settings(message_retention_s=3600, address_retention_s=3600, redis_views=False)
    worker = WorkerProcess(settings, tmp_path / "worker.log", views=False).start()
    try:
        worker.wait_ready()
        with EventProducer(settings) as producer:
            producer.send("send", event("RET1", "relayed", 0))
            producer.send("send", event("RET1", "delivered", 1000))
            producer.send("send", event("RET2", "relayed", 0, validity_seconds=5400))
        before = collect(
            settings,
            "status",
            lambda s: s.get("RET1", {}).get("status") == "sent" and "RET2" in s,
            "message_id",
        )
        # One event moves the clock past RET1's retention end (1 h after its last event)
        # and RET2's validity (1.5 h): both are due in the same clock tick.
        with EventProducer(settings) as producer:
            producer.send("send", event("RET3", "relayed", 2 * H))
        latest = collect(
            settings,
            "status",
            lambda s: s.get("RET2", {}).get("status") == "failed" and "RET1" not in s,
            "message_id",
            timeout=60,
        )
        assert latest["RET2"]["status"] == "failed"
        assert latest["RET2"]["failure_type"] == "soft"
        assert "RET1" not in latest  # its tombstone: gone from the compacted topic too
        deleted = _tombstones(settings, settings.topic("status"), {"RET1"})
        assert set(deleted) == {"RET1"}
        assert deleted["RET1"]["version"] == str(before["RET1"]["version"]).encode()
        assert int(deleted["RET1"]["event_time"]) >= event("X", "k", 2 * H)["event_time"]
        changelog = f"{settings.app_id}-messages-changelog"
        assert "RET1" not in _tombstones(settings, changelog, set(), timeout=5)
        # A late event of RET1, older than its tombstone, is dead-lettered, not reborn.
        with EventProducer(settings) as producer:
            producer.send("bounce", event("RET1", "async", 2000, smtp_code=550))
        [late] = collect_all(settings, "dlq", 1, timeout=30)
        assert late.value["error_kind"] == "late"
        # One retention later the marker goes too: a deletion on the changelog, so a
        # restart restores the table without it.
        with EventProducer(settings) as producer:
            producer.send("send", event("RET4", "relayed", 3 * H + 60_000))
        assert "RET1" in _tombstones(settings, changelog, {"RET1"})
    finally:
        worker.stop()
    assert "Traceback" not in worker.log_text()
