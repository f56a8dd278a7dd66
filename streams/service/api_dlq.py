"""Dead letters for the operator API: the dead-letter topic read from a point in time.

Blocking (confluent-kafka): run it in a thread. It reads each partition from the first
offset at or after ``since`` up to its end, at most ``limit`` letters in
all, and shows keys and values as their sizes: they are raw input, which may hold
recipient addresses.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streams.pipeline.topics import Topic
from streams.runtime.codec import Codec, DecodeError
from streams.runtime.config import Settings


class DlqUnavailable(RuntimeError):
    """The broker did not answer."""


def read_dead_letters(
    settings: Settings, codec: Codec, since_ms: int, limit: int, timeout_s: float = 5.0
) -> list[dict[str, Any]]:
    """The oldest ``limit`` dead letters written at or after ``since_ms``, oldest first
    (reading at most ``limit`` per partition)."""
    deadline = time.monotonic() + timeout_s
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"api-dlq-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            # The end is where each partition reports EOF: the high watermark is not exact
            # on every broker (the embedded one gives the last batch's first offset + 1).
            "enable.partition.eof": True,
            **settings.kafka_client_config(),
        }
    )
    try:
        return _read(consumer, settings.topic(Topic.DLQ), codec, since_ms, limit, deadline)
    except KafkaException as exc:
        raise DlqUnavailable(str(exc)) from None
    finally:
        consumer.close()


def _read(
    consumer: Consumer, topic: str, codec: Codec, since_ms: int, limit: int, deadline: float
) -> list[dict[str, Any]]:
    wait = max(0.1, deadline - time.monotonic())
    meta = consumer.list_topics(topic, timeout=wait).topics[topic]
    if meta.error is not None:
        raise DlqUnavailable(str(meta.error))
    wanted = [TopicPartition(topic, p, since_ms) for p in sorted(meta.partitions)]
    starts = consumer.offsets_for_times(wanted, timeout=wait)
    assigned = [tp for tp in starts if tp.offset >= 0]  # -1: nothing at or after since
    consumer.assign(assigned)
    # The oldest ``limit`` of all are among the first ``limit`` of each partition.
    left = {tp.partition: limit for tp in assigned}
    out: list[dict[str, Any]] = []
    while left and time.monotonic() < deadline:
        for msg in consumer.consume(500, timeout=0.2):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    raise DlqUnavailable(err.str())
                left.pop(msg.partition(), None)
            # Not every broker finds the offset for a time exactly (the embedded one may
            # start a partition earlier): the record's own time decides.
            elif msg.partition() in left and msg.timestamp()[1] >= since_ms:
                out.append(_shown(codec, msg))
                left[msg.partition()] -= 1
                if not left[msg.partition()]:
                    del left[msg.partition()]
    out.sort(key=lambda r: (r["timestamp"], r["partition"], r["offset"]))
    return out[:limit]


def _shown(codec: Codec, msg: Any) -> dict[str, Any]:
    where = {"partition": msg.partition(), "offset": msg.offset(), "timestamp": msg.timestamp()[1]}
    try:
        letter = codec.decode(Topic.DLQ, msg.value())
    except DecodeError as exc:
        return {**where, "error": f"undecodable dead letter: {exc.reason}", "error_kind": "decode"}
    letter["value"] = f"<{len(letter['value'] or b'')} bytes>"
    letter["key"] = None if letter["key"] is None else f"<{len(letter['key'])} bytes>"
    return {**where, **letter}
