"""Redis killed mid-stream and restarted empty: the stream workers never stop (the status
topic keeps advancing while Redis is down) and the Redis views converge to ``replay``.

The outage is 8 s here and 30 s under ``make reliability`` (MTA_RELIABILITY=long). A private
redis-server on a free port is used, so the shared Redis is never touched.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.runtime.config import Settings
from streams.serving.views import ViewStore
from streams.testing.sample import SampleCampaign
from streams.testing.services import RedisServer, long_run
from streams.testing.worker import WorkerProcess

from .helpers import collect, produce_paced
from .reference import diff, reference, stream_state

pytestmark = [pytest.mark.broker, pytest.mark.redis, pytest.mark.e2e]

OUTAGE_S = 30.0 if long_run() else 8.0


def _status_end(settings: Settings) -> int:
    """Sum of the status topic's high watermarks: how much the workers have written."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "watermarks"})
    try:
        topic = settings.topic("status")
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(settings.partitions)
        )
    finally:
        consumer.close()


def _views(store: ViewStore) -> dict[str, dict[str, dict[str, Any]]]:
    return {
        "message": {v["message_id"]: {"status": v["status"]} for v in store.scan("msg")},
        "address": {v["address"]: {"state": v["state"]} for v in store.scan("addr")},
        "kpi": {v["delivery_id"]: {"sent": v["sent"]} for v in store.scan("kpi")},
    }


def test_redis_killed_and_restarted_empty_views_converge(make_settings, tmp_path):
    redis_server = RedisServer(tmp_path / "redis.log").start()
    settings = make_settings(redis_url=redis_server.url)
    events = SampleCampaign(recipients=1500, seed=23).events()
    expected = reference(events)
    want = {
        "message": {k: {"status": v["status"]} for k, v in expected["message"].items()},
        "address": {k: {"state": v["state"]} for k, v in expected["address"].items()},
        "kpi": {k: {"sent": v["sent"]} for k, v in expected["kpi"].items()},
    }
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        assert worker.proc is not None
        pid = worker.proc.pid
        first, rest = events[: len(events) // 3], events[len(events) // 3 :]
        produce_paced(settings, first, 0, 50, True)
        collect(settings, "status", lambda got: len(got) >= 300, "message_id", timeout=60)
        store = ViewStore.from_settings(settings)
        deadline = time.monotonic() + 30
        while not store.scan("msg") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert store.scan("msg"), "views were not written before the outage"

        # The rest of the campaign arrives while Redis is down.
        producer = threading.Thread(
            target=produce_paced, args=(settings, rest, OUTAGE_S * 0.8, 50, True)
        )
        redis_server.kill()
        killed_at = time.monotonic()
        producer.start()
        marks = [_status_end(settings)]
        # Four intervals whatever a sample costs: a loop bounded by the clock would leave
        # fewer on a slow machine than the check below needs (the outage is >= OUTAGE_S).
        for _ in range(4):
            time.sleep(OUTAGE_S / 4)
            marks.append(_status_end(settings))
        down_for = time.monotonic() - killed_at
        redis_server.start()  # same port, no persistence: empty
        producer.join()

        assert marks[-1] > marks[0], f"status topic stood still while Redis was down: {marks}"
        assert sum(b > a for a, b in itertools.pairwise(marks)) >= 2, marks
        assert diff(expected, stream_state(settings, expected)) == []

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            got = _views(store)
            if got == want:
                break
            time.sleep(1)
        assert diff(want, got) == []
        assert worker.alive() and worker.proc.pid == pid
        log = worker.log_text()
        assert "Redis unavailable" in log
        assert "rebuilding from the topics" in log
        print(f"\nRedis down {down_for:.1f}s; status high watermarks during it: {marks}")
    finally:
        worker.stop()
        redis_server.kill()
