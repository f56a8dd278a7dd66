"""A small consumer for downstream readers of the output topics (status, address, KPI,
throttle, dead letters): confluent-kafka, decoded records, bounded waits.

A record with a null value is a tombstone: its key retired from the workers' tables (a
message or an address; headers ``version`` and ``event_time``, see
streams/serving/retirement.py). It is yielded with ``value`` None, so that a reader
building the latest state per key drops the key (``fold_latest``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError

from streams.pipeline.topics import SCHEMA_FILES
from streams.runtime.codec import Codec
from streams.runtime.config import Settings


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: dict[str, Any] | None  # None: a tombstone
    headers: tuple[tuple[str, bytes | None], ...] = ()


def fold_latest(latest: dict[str, dict[str, Any]], record: Record, key_field: str) -> None:
    """Fold ``record`` into ``latest``, the newest version per ``key_field``: a record
    replaces an older or equal version, a tombstone drops its key (the topic orders them,
    so what follows a tombstone is a newer life of the key, whatever its version)."""
    if record.value is None:
        if record.key is not None:
            latest.pop(record.key.decode(errors="replace"), None)
        return
    key = record.value[key_field]
    if key not in latest or record.value.get("version", 0) >= latest[key].get("version", 0):
        latest[key] = record.value


class OutputConsumer:
    """Iterate the decoded records of one output topic.

    ``group`` None means a throw-away group reading from the beginning, which is what a
    tool or a test wants; a service passes its own group to resume where it stopped.
    """

    def __init__(
        self,
        settings: Settings,
        name: str,
        group: str | None = None,
        codec: Codec | None = None,
        from_beginning: bool = True,
    ) -> None:
        if name not in SCHEMA_FILES:
            raise ValueError(f"{name!r} is not an Avro output topic")
        self.name = name

        self.codec = codec or Codec.from_settings(settings)
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": group or f"reader-{uuid.uuid4().hex[:12]}",
                "auto.offset.reset": "earliest" if from_beginning else "latest",
                "enable.auto.commit": group is not None,
                "session.timeout.ms": int(settings.session_timeout_s * 1000),
                "heartbeat.interval.ms": int(settings.heartbeat_interval_s * 1000),
                **settings.kafka_client_config(),
            }
        )
        self._consumer.subscribe([settings.topic(name)])

    def records(self, idle_timeout: float = 5.0, max_wait: float = 60.0) -> Iterator[Record]:
        """Yield records until none arrived for ``idle_timeout`` s or ``max_wait`` s passed."""
        deadline = time.monotonic() + max_wait
        idle_since = time.monotonic()
        while time.monotonic() < deadline:
            msgs = self._consumer.consume(500, timeout=0.2)
            if not msgs:
                if time.monotonic() - idle_since > idle_timeout:
                    return
                continue
            idle_since = time.monotonic()
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"consumer error on {self.name}: {err}")
                value = msg.value()
                yield Record(
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    msg.key(),
                    None if value is None else self.codec.decode(self.name, value),
                    tuple(msg.headers() or ()),
                )

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> OutputConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
