"""Fixes and tuning of faust-streaming 0.15 that its settings do not expose.

- Lost table updates: before committing offsets Faust flushes its producer, but the
  buffer that holds table changelog records (``ProducerBuffer.flush``) gives up as soon
  as one record takes over 0.1 s to hand over, so under load offsets were committed while
  changelog records still waited in the buffer; a crash then lost those state changes for
  good (seen as lost deliveries in tests/e2e/test_crash_recovery.py under load). Here the
  buffer's flush waits until every record it took has reached the Kafka client, whose own
  flush Faust awaits next.
- Lost table state after a restart on the embedded broker: Tansu reports a partition's
  high watermark as the base offset of its last record batch, not the offset after its
  last record (seen: watermark 880 with records up to 884). Faust restores a table's
  changelog up to that watermark, so the last batch of changes was never restored while
  the offsets of the inputs that made them were committed. High watermarks are therefore
  checked by reading what lies at and after the reported one (Apache Kafka reports the
  true end, where this finds nothing and changes nothing).
- Skipped input after a restart or rebalance: when recovery ends, Faust resumes the
  stream partitions first and then seeks them to their committed offsets, awaiting the
  seek; meanwhile its fetch loop hands records from the committed position to the agents'
  queues, and the flow-control ``resume`` that follows clears those queues. The consumer's
  position is by then past the cleared records, so they were never processed, and the next
  record's offset "gap" was counted as acknowledged and committed (seen: 17 records lost
  per partition after every SIGKILL in tests/e2e/test_crash_recovery.py). Here the seek
  happens while the stream partitions are still paused, and resuming them, resetting the
  read offsets and clearing the queues is one step with no await in between.
- Records dropped at the end of recovery: Faust hands its live set of active partitions
  to the consumer thread, and aiokafka reads it each time it wakes up while waiting for
  records. When recovery paused the changelog partitions the set became empty, which
  aiokafka takes for "every partition": the paused stream partitions' buffered records
  were returned, Faust dropped them as not active, and the consumer's position had moved
  past them (seen: hundreds of input records per partition skipped after a restart under
  CPU load, then committed as an offset gap). The thread now gets a snapshot, and none
  when it is empty. Any offset gap left in an acknowledged topic is logged as a warning:
  this project's topics have none of their own.
- A worker crashed by a rebalance during recovery: the new assignment's standby
  partitions start with no known offset (None) until the next recovery builds them, and
  the recovery still running sought them there (``ValueError: Offset must be a positive
  integer``, once in the rebalance test). Those partitions are left to the next recovery.
- Per-record task: Faust's fetch loop hands every record over with
  ``wait_first(callback(message), suspend_flow.wait())``, two tasks per record, so a busy
  worker spent its time creating and cancelling tasks. The record is handed over directly
  while the flow is not suspended (a suspension only happens in a rebalance, whose queue
  clearing and seek to committed offsets cover whatever is handed over meanwhile).
- Feedback latency: faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500``
  hard-coded. The broker may hold a fetch that long when a partition is idle, and each
  agent hop pays it: the feedback path (input → signal → control record) has two hops,
  so a throttle change took 1.2 s at the median. A short wait costs a few more empty
  fetches, nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from faust.tables.recovery import Recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer

FETCH_MAX_WAIT_MS = 50

log = logging.getLogger(__name__)


_client_config: dict[str, Any] = {}


def _true_ends(reported: dict[Any, int]) -> dict[Any, int]:
    """The offset after the last record of each partition, reading from the reported end."""
    from confluent_kafka import Consumer, TopicPartition

    ends = dict(reported)
    probe = Consumer(
        {**_client_config, "group.id": "mta-feedback-watermark-probe", "enable.auto.commit": False}
    )
    try:
        probe.assign([TopicPartition(tp.topic, tp.partition, hw) for tp, hw in reported.items()])
        by_key = {(tp.topic, tp.partition): tp for tp in reported}
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 0.5:
            messages = probe.consume(1000, timeout=0.1)
            for msg in messages:
                if msg.error() is None:
                    tp = by_key[(msg.topic(), msg.partition())]
                    ends[tp] = max(ends[tp], msg.offset() + 1)
            if messages:
                idle_since = time.monotonic()
    finally:
        probe.close()
    return ends


class _FastFetchThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        # A snapshot: the set Faust passes is its live one, and aiokafka reads it again
        # each time it wakes up; emptied meanwhile (recovery pausing the changelogs), it
        # meant "every partition", paused ones included.
        snapshot = frozenset(active_partitions)
        if not snapshot:
            return {}
        return await super()._fetch_records(
            consumer, snapshot, timeout=timeout, max_records=max_records
        )

    async def _highwaters(self, partitions: Any) -> Any:
        reported = dict(await super()._highwaters(partitions))
        if not _client_config or not reported:
            return reported
        return await asyncio.get_running_loop().run_in_executor(None, _true_ends, reported)


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


async def _seek_then_resume(self: Recovery, generation_id: int) -> bool:
    """Seek paused stream partitions to their committed offsets, then resume them with the
    read offsets set and the queues cleared at once; False when a rebalance intervened."""
    app, consumer = self.app, self.app.consumer
    streams = {tp for tp in consumer.assignment() if not self._is_changelog_tp(tp)}
    committed: dict[Any, Any] = {}
    if streams:
        consumer.pause_partitions(streams)
        self.log.info("Seek stream partitions to committed offsets.")
        committed = dict(
            await asyncio.wait_for(
                consumer.seek_to_committed(), timeout=app.conf.broker_request_timeout
            )
        )
    if app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again")
        return False
    # No await from here on: no record can reach a queue between the resume and the clear.
    consumer._read_offset.update(
        {tp: off if off is not None and off >= 0 else None for tp, off in committed.items()}
    )
    consumer._committed_offset.update({tp: off for tp, off in committed.items() if off})
    consumer.resume_partitions(streams)
    self.completed.set()
    app.flow_control.resume()
    consumer.resume_flow()
    await app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    return True


async def _resume_streams(self: Recovery, generation_id: int = 0) -> None:
    await self.app.on_rebalance_complete.send()
    if await _seek_then_resume(self, generation_id):
        self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")


async def _on_recovery_completed(self: Recovery, generation_id: int = 0) -> None:
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    pending = [
        asyncio.ensure_future(
            table.on_recovery_completed(
                self.actives_for_table[table], self.standbys_for_table[table]
            )
        )
        for table in self.tables.values()
    ]
    if pending:
        await asyncio.wait(pending)
    if await _seek_then_resume(self, generation_id):
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")


async def _seek_offsets(self: Recovery, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
    """Faust's seek of changelog partitions to where their reading starts, without the
    partitions whose start is not known yet (None): a rebalance during recovery adds its
    standby partitions so, the recovery still running then sought them, and aiokafka's
    ``seek(tp, None)`` crashed the worker. The recovery that rebalance starts seeks them."""
    new_offsets = {}
    for tp in list(tps):
        offset = offsets[tp]
        if offset is not None:
            new_offsets[tp] = 0 if offset == -1 else offset
    await consumer.seek_wait(new_offsets)


async def _drain_messages(self: faust_consumer.Consumer, fetcher: Any) -> None:
    """faust 0.15's ``Consumer._drain_messages`` with a direct hand-over (see above)."""
    callback = self.callback
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    read_offset = self._read_offset
    acks_enabled_for = self.app.topics.acks_enabled_for
    since_yield = 0
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            self.diag.set_flag(faust_consumer.CONSUMER_FETCHING)
            records = self.getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in records:
                    since_yield += 1
                    if since_yield > 100:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    r_offset = read_offset.get(tp)
                    if r_offset is not None and offset < r_offset:
                        continue  # read before a seek back; dropped, as faust does
                    if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                        # This project's topics have no offset gaps (no compaction, no
                        # transactions): one here means records the client dropped.
                        log.warning("%s: offsets %s-%s skipped", tp, r_offset + 1, offset - 1)
                        await self._add_gap(tp, r_offset + 1, offset)
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if self.suspend_flow.is_set():
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    else:
                        await callback(message)
                    read_offset[tp] = offset
            self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            return
        raise
    finally:
        self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)


def apply(client_config: dict[str, Any]) -> None:
    """Install the fixes; idempotent, affects this process's Faust apps only.

    ``client_config`` is the confluent-kafka configuration (bootstrap servers and security)
    used to check high watermarks."""
    _client_config.clear()
    _client_config.update(client_config)
    faust_aiokafka.Consumer._new_consumer_thread = _new_consumer_thread  # type: ignore[method-assign]
    ProducerBuffer._send_pending = _send_pending  # type: ignore[method-assign]
    ProducerBuffer.flush = _flush  # type: ignore[method-assign]
    faust_consumer.Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
    Recovery._resume_streams = _resume_streams  # type: ignore[method-assign]
    Recovery.on_recovery_completed = _on_recovery_completed  # type: ignore[method-assign]
    Recovery._seek_offsets = _seek_offsets  # type: ignore[method-assign]
