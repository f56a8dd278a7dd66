"""Fixes and tuning of faust-streaming 0.15 that its settings do not expose.

- Lost table updates: before committing offsets Faust flushes its producer, but the
  buffer that holds table changelog records (``ProducerBuffer.flush``) gives up as soon
  as one record takes over 0.1 s to hand over, so under load offsets were committed while
  changelog records still waited in the buffer; a crash then lost those state changes for
  good (seen as lost deliveries in tests/e2e/test_crash_recovery.py under load). Here the
  buffer's flush waits until every record it took has reached the Kafka client, whose own
  flush Faust awaits next.
- Feedback latency: faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500``
  hard-coded. The broker may hold a fetch that long when a partition is idle, and each
  agent hop pays it: the feedback path (input → signal → control record) has two hops,
  so a throttle change took 1.2 s at the median. A short wait costs a few more empty
  fetches, nothing else.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer

FETCH_MAX_WAIT_MS = 50


class _FastFetchThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


def _new_consumer_thread(self: faust_aiokafka.Consumer) -> _FastFetchThread:
    return _FastFetchThread(self, loop=self.loop, beacon=self.beacon)


async def _send_pending(self: ProducerBuffer, fut: Any) -> None:
    # Counted from the moment the record leaves the queue until the client holds it.
    self._mta_in_flight = getattr(self, "_mta_in_flight", 0) + 1
    try:
        await fut.message.channel.publish_message(fut, wait=False)
    finally:
        self._mta_in_flight -= 1


async def _flush(self: ProducerBuffer) -> None:
    while self.size or getattr(self, "_mta_in_flight", 0):
        if self.state != "running" and self.size:
            raise RuntimeError("Cannot flush: Producer not Running")
        await asyncio.sleep(0.001)


def apply() -> None:
    """Install the fixes; idempotent, affects this process's Faust apps only."""
    faust_aiokafka.Consumer._new_consumer_thread = _new_consumer_thread  # type: ignore[method-assign]
    ProducerBuffer._send_pending = _send_pending  # type: ignore[method-assign]
    ProducerBuffer.flush = _flush  # type: ignore[method-assign]
