"""The Campaign-side EventProducer across a broker outage: it buffers and delivers each record
exactly once, or, past its delivery timeout, raises a ProducerError that names the count.

A private Tansu broker advertises the port of a TcpProxy (streams/testing/proxy.py), so every
connection the producer makes, including those from metadata, goes through the proxy, which
cuts the network on demand.

Tansu vs Apache Kafka: Tansu is a single node, so "broker unreachable" is the whole cluster
(no leader fail-over to observe), and its idempotent-producer sequence checks are its own
implementation; the exactly-once count below is what this broker did, by event id, on the
topic itself.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import event

from streams.runtime.config import Settings
from streams.runtime.producer import EventProducer, ProducerError
from streams.serving.consumer import OutputConsumer
from streams.testing.proxy import TcpProxy
from streams.testing.services import TansuBroker, free_port

# A private broker and the producer; no worker, no Redis.
pytestmark = pytest.mark.broker


@pytest.fixture
def behind_proxy(tmp_path: Path, make_settings) -> Iterator[tuple[Settings, TcpProxy]]:
    proxy_port = free_port()
    broker = TansuBroker(tmp_path / "broker.log", advertised_port=proxy_port).start()
    proxy = TcpProxy(proxy_port, broker.port).start()
    settings = make_settings(bootstrap_servers=broker.bootstrap)  # topics created
    try:
        yield settings, proxy
    finally:
        proxy.stop()
        broker.kill()


def _events(tag: str, count: int) -> list[dict]:
    return [event(f"{tag}{i:05d}", "relayed", i) for i in range(count)]


def _event_ids_on_topic(settings: Settings, expected: set[str]) -> Counter[str]:
    """Every event id on the send topic, with its count: read until all expected ids are
    in, then on until the topic stays quiet, so duplicates written late are counted too."""
    seen: Counter[str] = Counter()
    with OutputConsumer(settings, "send") as consumer:
        # The first read also waits for the group join on the fresh broker (3 s here), so
        # it ends on the expected ids or the ceiling, not on a quiet spell.
        for record in consumer.records(idle_timeout=90.0, max_wait=90.0):
            seen[record.value["event_id"]] += 1
            if expected <= set(seen):
                break
        for record in consumer.records(idle_timeout=2.0):
            seen[record.value["event_id"]] += 1
    return seen


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_short_outage_delivers_every_record_exactly_once(behind_proxy, mode):
    """Outage of 5 s (well inside delivery.timeout.ms = 60 s) while records are being sent.

    ``blackhole`` drops responses of requests the broker may already have written, so the
    producer retries them: idempotence must stop those retries from being written twice.
    """
    settings, proxy = behind_proxy
    events = _events("M", 3000)
    producer = EventProducer(settings)
    cut_at = len(events) // 3

    def cut() -> None:
        proxy.outage(mode)
        time.sleep(5.0)
        proxy.restore()

    outage = threading.Thread(target=cut)
    for i, ev in enumerate(events):
        if i == cut_at:
            outage.start()
        producer.send("send", ev)
        if i % 100 == 0:
            time.sleep(0.05)  # spread sending over the outage, as Campaign would
    outage.join()
    stats = producer.flush(timeout=60)
    assert (stats.produced, stats.delivered, stats.failed) == (3000, 3000, 0)
    seen = _event_ids_on_topic(settings, {ev["event_id"] for ev in events})
    assert len(seen) == 3000
    assert [eid for eid, n in seen.items() if n > 1] == []
    assert proxy.connections > 1  # the producer did reconnect after the cut


def test_outage_longer_than_delivery_timeout_raises_and_names_the_count(behind_proxy):
    """delivery.timeout.ms = 3 s, broker unreachable for 8 s: the records sent during the
    outage fail loudly (ProducerError with their count); the others are on the topic once."""
    settings, proxy = behind_proxy
    producer = EventProducer(settings, overrides={"delivery.timeout.ms": 3000})
    before, during = _events("A", 200), _events("B", 300)
    for ev in before:
        producer.send("send", ev)
    assert producer.flush(timeout=30).delivered == 200
    proxy.outage("refuse")
    try:
        for ev in during:
            producer.send("send", ev)
        started = time.monotonic()
        with pytest.raises(ProducerError) as info:
            producer.flush(timeout=30)
        assert time.monotonic() - started < 8.0  # failed at the timeout, not at the end
    finally:
        time.sleep(max(0.0, 8.0 - (time.monotonic() - started)))
        proxy.restore()
    assert "300 of 500 records failed" in str(info.value)
    assert "timed out" in str(info.value).lower()
    assert producer.stats.delivered + producer.stats.failed == producer.stats.produced
    seen = _event_ids_on_topic(settings, {ev["event_id"] for ev in before})
    assert set(seen) == {ev["event_id"] for ev in before}
    assert max(seen.values()) == 1
