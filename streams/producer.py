"""Producer for Campaign-side and MTA-side code: confluent-kafka, idempotent, acks=all.

Events are Avro-encoded and keyed by recipient address, so a message's status and its
address's health live in the same partition and the worker needs no repartition hop.
A failed delivery is never silent: it is counted, logged (without the address) and
raised by ``flush``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from streams.avro import Codec
from streams.config import Settings
from streams.topics import INPUT_TOPICS

log = logging.getLogger(__name__)


class ProducerError(RuntimeError):
    """Some records were not delivered (after the producer's own retries and timeout)."""


@dataclass
class DeliveryStats:
    produced: int = 0
    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # first few error texts, for the message


class EventProducer:
    """``send(family, event)`` then ``flush()``; usable as a context manager."""

    def __init__(
        self,
        settings: Settings,
        codec: Codec | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.codec = codec or Codec.from_settings(settings.schema_registry_url)
        conf: dict[str, Any] = {
            "bootstrap.servers": settings.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500000,
            # How long a record may wait for the broker before it is reported as failed.
            "delivery.timeout.ms": 60000,
            **settings.kafka_client_config(),
            **(overrides or {}),
        }
        self._producer = Producer(conf)
        self._topics = {family: settings.topic(family) for family in INPUT_TOPICS}
        self.stats = DeliveryStats()

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.stats.delivered += 1
            return
        self.stats.failed += 1
        if len(self.stats.errors) < 5:
            self.stats.errors.append(str(err))
        log.error("event not delivered: %s", err)

    def send(self, family: str, event: Mapping[str, Any]) -> None:
        """Encode and enqueue one event of ``family`` (send, bounce or retry)."""
        topic = self._topics.get(family)
        if topic is None:
            raise ValueError(f"unknown event family {family!r}; expected one of {INPUT_TOPICS}")
        value = self.codec.encode(family, dict(event), subject=f"{topic}-value")
        self.produce_raw(topic, str(event["recipient"]).encode(), value)

    def produce_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Enqueue already-encoded bytes (tools and tests use this for hostile input)."""
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=self._on_delivery)
                break
            except BufferError:
                # Local queue full: serve delivery reports until there is room.
                self._producer.poll(0.1)
        self.stats.produced += 1
        self._producer.poll(0)

    def flush(self, timeout: float = 60.0) -> DeliveryStats:
        """Wait for every record; raises ProducerError if any was not delivered."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise ProducerError(f"{remaining} records still undelivered after {timeout:.0f}s")
        if self.stats.failed:
            raise ProducerError(
                f"{self.stats.failed} of {self.stats.produced} records failed: "
                + "; ".join(self.stats.errors)
            )
        return self.stats

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
