"""Producer for Campaign-side and MTA-side code: confluent-kafka, idempotent, acks=all.

Events are Avro-encoded and keyed by recipient address (lower-cased), so a message's status and its
address's health live in the same partition and the worker needs no repartition hop.
A failed delivery is never silent: it is counted, logged (without the address) and
raised by ``flush``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.pipeline.topics import INPUT_TOPICS, input_key
from streams.runtime.codec import Codec
from streams.runtime.config import Settings
from streams.runtime.sink import DeliveryStats, ProducerError, RecordSink

__all__ = ["DeliveryStats", "EventProducer", "ProducerError"]


class EventProducer:
    """``send(family, event)`` then ``flush()``; usable as a context manager."""

    def __init__(
        self,
        settings: Settings,
        codec: Codec | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.codec = codec or Codec.from_settings(settings)
        self._sink = RecordSink(settings, overrides)
        self._topics = {family: settings.topic(family) for family in INPUT_TOPICS}

    @property
    def stats(self) -> DeliveryStats:
        return self._sink.stats

    def send(self, family: str, event: Mapping[str, Any]) -> None:
        """Encode and enqueue one event of ``family`` (send, bounce or retry)."""
        topic = self._topics.get(family)
        if topic is None:
            raise ValueError(f"unknown event family {family!r}; expected one of {INPUT_TOPICS}")
        value = self.codec.encode(family, dict(event), topic)
        self.produce_raw(topic, input_key(str(event["recipient"])), value)

    def produce_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Enqueue already-encoded bytes (tools and tests use this for hostile input)."""
        self._sink.produce(topic, key, value)

    def flush(self, timeout: float = 60.0) -> DeliveryStats:
        """Wait for every record; raises ProducerError if any was not delivered."""
        return self._sink.flush(timeout)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
