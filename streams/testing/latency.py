"""Feedback latency: a rate-limit reply produced → the control record written.

Each trigger is a 421 rate-limit deferral for a fresh domain of the ``default`` provider
group; such domains are throttled one by one, so every trigger makes exactly one new
throttle key change at once, with no anti-flapping delay in the way.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, TopicPartition

from streams.pipeline.topics import Topic
from streams.runtime.config import Settings
from streams.runtime.producer import EventProducer

FETCH_WAIT_MS = 200

RATE_LIMIT_REPLY = "421 4.7.0 Too many messages from your IP address, slow down and try again later"


def trigger(i: int, event_time_ms: int) -> dict[str, Any]:
    return {
        "event_id": f"lat-{i}",
        "event_time": event_time_ms,
        "delivery_id": "LAT",
        "message_id": f"LAT-{i}",
        "recipient": f"probe{i}@lat{i}.example.com",
        "kind": "deferred",
        "attempt": 1,
        "smtp_code": 421,
        "enhanced_status": "4.7.0",
        "diagnostic": RATE_LIMIT_REPLY,
        "sending_ip": "192.0.2.99",
    }


class FirstSeen:
    """Follows an output topic from its end in a thread and notes when each record key
    (the message id of a status record, the key of a throttle record) was first written:
    the record's producer timestamp, on the wall clock (``time.time()``, seconds). The
    worker's producer stamps each record as it sends it, so the figure leaves out how long
    this follower takes to fetch it. Keys only, no decoding: the follower shares the machine
    with the worker it measures. Partitions are assigned at their end offsets, not through
    a consumer group: one reader needs no group, and a rejoin would restart it from the
    latest offset, past what was produced meanwhile."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.seen: dict[str, float] = {}
        self._topic = settings.topic(topic)
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": f"first-seen-{time.time_ns()}",  # required, never joined
                "enable.auto.commit": False,
                # The embedded broker answers a fetch only when its wait is over, and one
                # whose wait is shorter than its read of a long partition comes back empty,
                # every time: at 10 ms none of 13,000 status records past offset 45,000 was
                # seen. The wait is not in the figures: they use producer timestamps.
                "fetch.wait.max.ms": FETCH_WAIT_MS,
                **settings.kafka_client_config(),
            }
        )
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def _follow(self) -> None:
        seen = self.seen
        while not self._stop.is_set():
            # poll, not consume: a batch call waits for its count or its timeout.
            msg = self._consumer.poll(0.05)
            if msg is not None and msg.error() is None and (key := msg.key()) is not None:
                kind, stamp_ms = msg.timestamp()
                written = stamp_ms / 1000 if kind == TIMESTAMP_CREATE_TIME else time.time()
                seen.setdefault(key.decode(), written)

    def __enter__(self) -> FirstSeen:
        topic = self._consumer.list_topics(self._topic, timeout=10).topics.get(self._topic)
        if topic is None or topic.error is not None or not topic.partitions:
            self._consumer.close()
            raise RuntimeError(f"topic {self._topic} not found: is a worker running on it?")
        ends = []
        for p in topic.partitions:
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(self._topic, p), timeout=10
            )
            ends.append(TopicPartition(self._topic, p, high))
        self._consumer.assign(ends)
        self._thread.start()
        return self

    def wait_for(self, keys: set[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(keys & self.seen.keys()) < len(keys):
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def figures(sent: dict[str, float], seen: dict[str, float]) -> dict[str, Any]:
    """Latency figures (ms) from send and first-written times per key (wall clock, s)."""
    latencies = sorted((seen[k] - sent[k]) * 1000 for k in sent if k in seen)
    if not latencies:
        return {"received": 0}
    return {
        "received": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
        "max_ms": round(latencies[-1], 1),
    }


def measure(
    settings: Settings,
    from_ms: int,
    triggers: int = 20,
    gap_s: float = 0.05,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Produce ``triggers`` rate-limit replies ``gap_s`` apart, their event times 1 ms
    apart from ``from_ms``; return latency figures (ms). Waits up to ``timeout_s`` for
    the last control record: a slow day lengthens the figures, not the outcome."""
    with FirstSeen(settings, Topic.THROTTLE) as follower:
        sent: dict[str, float] = {}
        with EventProducer(settings, overrides={"linger.ms": 0}) as producer:
            for i in range(triggers):
                producer.send("retry", trigger(i, from_ms + i))
                producer.flush(5)
                sent[f"domain:lat{i}.example.com"] = time.time()
                time.sleep(gap_s)
        follower.wait_for(set(sent), timeout_s)
    return {"triggers": triggers, **figures(sent, follower.seen)}
