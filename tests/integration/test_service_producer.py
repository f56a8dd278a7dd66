"""The HTTP service's producer against the embedded broker: a send returns once every
record is acknowledged, and fails in time (BrokerUnavailable) when the broker is away."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from confluent_kafka import KafkaError

from streams.pipeline.topics import Topic
from streams.runtime.codec import Codec
from streams.runtime.vendor_records import Record, dead_letter
from streams.service.acks import AsyncProducer, BrokerUnavailable

from .service import read_topic

pytestmark = [pytest.mark.broker, pytest.mark.redis]


def letters(n: int) -> list[Record]:
    codec = Codec()
    return [dead_letter(codec, "test", i, f"raw {i}", f"reason {i}") for i in range(n)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_send_returns_once_the_broker_has_every_record(make_settings):
    settings = make_settings()

    async def run() -> None:
        producer = AsyncProducer(settings, ack_timeout_s=8)
        producer.start()
        await producer.send(letters(500), time.monotonic())
        await producer.send([], time.monotonic())
        # Acknowledged means readable, before any flush or close.
        assert len(read_topic(settings, Topic.DLQ, 500, timeout=30, linger=0.5)) == 500
        assert await producer.close() == 0

    asyncio.run(run())


def test_a_fatal_error_replaces_the_producer(make_settings):
    settings = make_settings()

    async def run() -> None:
        producer = AsyncProducer(settings, ack_timeout_s=8)
        producer.start()
        await producer.send(letters(1), time.monotonic())
        first = producer._producer
        # What librdkafka reports when an idempotent producer can no longer go on.
        producer._on_error(KafkaError(KafkaError._FATAL, "simulated", fatal=True))
        await producer.send(letters(2), time.monotonic())
        assert producer._producer is not first
        assert await producer.close() == 0

    asyncio.run(run())
    assert len(read_topic(settings, Topic.DLQ, 3, timeout=30, linger=0.5)) == 3


def test_an_unreachable_broker_fails_a_send_within_the_timeout(make_settings):
    settings = make_settings(bootstrap_servers=f"127.0.0.1:{closed_port()}", create_topics=False)

    async def run(overrides: dict, count: int) -> str:
        producer = AsyncProducer(settings, ack_timeout_s=1.5, overrides=overrides)
        producer.start()
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as failed:
            await producer.send(letters(count), started)
        assert 1.4 < time.monotonic() - started < 4
        await producer.close(timeout=0.1)
        return str(failed.value)

    # Whichever comes first: the wait's deadline or the records' own delivery timeout.
    message = asyncio.run(run({}, 3))
    assert "did not confirm" in message or "not delivered" in message
    # A local queue that stays full is given up on at the same deadline.
    tiny = {"queue.buffering.max.messages": 5}
    assert "queue stayed full" in asyncio.run(run(tiny, 50))
