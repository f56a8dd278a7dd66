"""Tuning of faust-streaming's Kafka consumer that its settings do not expose.

faust 0.15 builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` hard-coded. The
broker may hold a fetch that long when a partition is idle, and each agent hop pays it:
the feedback path (input → signal → control record) has two hops, so a throttle change
took 1.2 s at the median. A short wait costs a few more empty fetches, nothing else.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

FETCH_MAX_WAIT_MS = 50


class _FastFetchThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


def _new_consumer_thread(self: faust_aiokafka.Consumer) -> _FastFetchThread:
    return _FastFetchThread(self, loop=self.loop, beacon=self.beacon)


def apply() -> None:
    """Install the tuning; idempotent, affects this process's Faust apps only."""
    faust_aiokafka.Consumer._new_consumer_thread = _new_consumer_thread  # type: ignore[method-assign]
