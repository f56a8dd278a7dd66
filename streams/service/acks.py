"""The HTTP service's producer: a request's records, confirmed by the broker before it is
answered.

One confluent-kafka producer (idempotent, ``acks=all``) serves every request. A request
enqueues its records with one delivery callback object, and a task of the event loop
serves the producer's delivery reports (every few milliseconds while records are in
flight): the callbacks run in the loop's own thread and resolve the request's future
directly, with no thread hand-off. A request waits at most ``ack_timeout_s`` from its
start: a record the broker has not confirmed by then, or any failed delivery, makes it
``BrokerUnavailable``, and the MTA retries the whole request later. The records' own
delivery timeout is the same, so records of an abandoned request do not pile up in memory
while the broker is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.pipeline.topics import Topic
from streams.runtime.config import Settings
from streams.runtime.sink import producer_config
from streams.runtime.vendor_records import Record

log = logging.getLogger(__name__)

# SparkPost waits 10 s for an answer: give up waiting for the broker before that.
DEFAULT_ACK_TIMEOUT_S = 8.0
# Delivery reports are served this often while records are in flight (a fraction of the
# producer's linger), and at least this often when idle (errors, statistics).
_BUSY_POLL_S = 0.002
_IDLE_POLL_S = 0.1


class BrokerUnavailable(RuntimeError):
    """The broker did not confirm every record of a request in time."""


class _Pending:
    """The delivery reports still awaited for one request."""

    __slots__ = ("errors", "future", "left")

    def __init__(self, future: asyncio.Future[None], expected: int) -> None:
        self.future = future
        self.left = expected
        self.errors: list[str] = []

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic()}: {err.str()}")
        self.left -= 1
        if self.left <= 0 and not self.future.done():
            self.future.set_result(None)


class AsyncProducer:
    """``await send(records, started)``: returns once the broker has every record.
    ``start`` and ``close`` run in the event loop that serves the requests."""

    def __init__(
        self,
        settings: Settings,
        ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.ack_timeout_s = ack_timeout_s
        self._topics = {topic: settings.topic(topic) for topic in Topic}
        conf = producer_config(
            settings,
            {"delivery.timeout.ms": max(1000, int(ack_timeout_s * 1000)), **(overrides or {})},
        )
        self._auth_error_cb: Callable[[KafkaError], None] | None = conf.pop("error_cb", None)
        self._conf: dict[str, Any] = {**conf, "error_cb": self._on_error}
        self._producer = Producer(self._conf)
        self._fatal = False
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            self._producer.poll(0)
            if self._in_flight:
                await asyncio.sleep(_BUSY_POLL_S)
            else:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _IDLE_POLL_S)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            # An idempotent producer that hit a fatal error refuses every later record:
            # the next request replaces it (the records in flight fail and are retried).
            self._fatal = True
            log.error("Kafka producer fatal error, it will be replaced: %s", err.str())
        elif self._auth_error_cb is not None:
            try:
                self._auth_error_cb(err)
            except Exception as exc:
                log.error("%s", exc)
        else:
            log.warning("Kafka producer: %s", err.str())

    def _replace_if_fatal(self) -> None:
        if self._fatal:
            self._fatal = False
            old, self._producer = self._producer, Producer(self._conf)
            old.purge()

    async def send(self, records: Sequence[Record], started: float) -> None:
        """Produce ``records`` and wait for every delivery report, at most until
        ``started + ack_timeout_s`` (``time.monotonic()`` seconds)."""
        if not records:
            return
        self._replace_if_fatal()
        deadline = started + self.ack_timeout_s
        pending = _Pending(asyncio.get_running_loop().create_future(), len(records))
        self._in_flight += 1
        self._wake.set()
        try:
            await self._produce(records, pending, deadline)
            await asyncio.wait_for(pending.future, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise BrokerUnavailable(
                f"the broker did not confirm {pending.left} of {len(records)} records "
                f"within {self.ack_timeout_s:g}s"
            ) from None
        finally:
            self._in_flight -= 1
        if pending.errors:
            raise BrokerUnavailable(
                f"{len(pending.errors)} of {len(records)} records not delivered: "
                + pending.errors[0]
            )

    async def _produce(self, records: Sequence[Record], pending: _Pending, deadline: float) -> None:
        queued = 0
        try:
            for record in records:
                while True:
                    try:
                        self._producer.produce(
                            self._topics[record.topic],
                            record.value,
                            record.key,
                            on_delivery=pending.on_delivery,
                        )
                        break
                    except BufferError:
                        # The local queue is full (the broker is slow or away): the poll
                        # task drains it, within the request's time.
                        if time.monotonic() >= deadline:
                            raise BrokerUnavailable("the producer's queue stayed full") from None
                        await asyncio.sleep(_IDLE_POLL_S)
                queued += 1
        except KafkaException as exc:
            raise BrokerUnavailable(f"the producer refused a record: {exc}") from None
        finally:
            # Records never queued get no report: stop waiting for them.
            pending.left -= len(records) - queued

    def broker_reachable(self, timeout: float = 2.0) -> bool:
        """Whether the broker answers a metadata request (blocking: run it in a thread)."""
        try:
            self._producer.list_topics(timeout=timeout)
        except KafkaException:
            return False
        return True

    async def close(self, timeout: float = 10.0) -> int:
        """Stop polling and deliver what is queued; returns the records left."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        deadline = time.monotonic() + timeout
        left = self._producer.flush(0)
        while left and time.monotonic() < deadline:
            await asyncio.sleep(_BUSY_POLL_S * 10)
            left = self._producer.flush(0)
        return left
