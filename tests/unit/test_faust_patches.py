"""Fixes of faust-streaming in streams/runtime/faust_patches.py, checked without a broker.

The guard is checked against the installed faust-streaming and aiokafka. Each patch's test
runs one scenario with the upstream functions and again with the patch: the upstream run
shows the defect's symptom, the patched run does not. The scenarios use real faust, mode
and aiokafka objects where they can be built without a broker; what stands in for a broker
(or the client's network side) is a small fake named as such.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import confluent_kafka
import pytest
from aiokafka.consumer.fetcher import Fetcher, FetchResult
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.errors import IllegalStateError
from aiokafka.structs import ConsumerRecord
from faust.tables.recovery import Recovery
from faust.transport import consumer as faust_consumer
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from mode.utils.queues import FlowControlQueue

from streams.runtime import faust_patches
from streams.runtime.faust_patches import CHECK_VARIABLE, FaustPatchMismatch
from streams.testing.faust_patching import unstarted_app, use_patch

A, B, C = TP("t-changelog", 0), TP("t-changelog", 1), TP("t-changelog", 2)


class SeekRecorder:
    def __init__(self) -> None:
        self.sought: dict[TP, int] = {}

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        for offset in offsets.values():
            if not isinstance(offset, int) or offset < 0:  # as aiokafka's seek
                raise ValueError("Offset must be a positive integer")
        self.sought.update(offsets)


def test_partitions_whose_start_is_not_built_yet_are_not_sought():
    consumer = SeekRecorder()
    offsets: Counter[Any] = Counter({A: -1, B: 41})
    offsets.setdefault(C, None)  # added by a rebalance during recovery, as faust does
    asyncio.run(faust_patches._seek_offsets(None, consumer, {A, B, C}, offsets, "standby"))  # type: ignore[arg-type]
    assert consumer.sought == {A: 0, B: 41}


# -- the start-up guard


def test_guard_passes_on_the_installed_versions(monkeypatch):
    monkeypatch.delenv(CHECK_VARIABLE, raising=False)
    assert faust_patches._mismatches() == []
    faust_patches.check_upstream()


def unpatch_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream functions everywhere, for a test that calls apply(); restored at its end."""
    monkeypatch.setattr(faust_patches, "_client_config", {})
    monkeypatch.setattr(faust_patches, "_fetch_max_bytes", faust_patches._fetch_max_bytes)
    for patch in faust_patches.PATCHES:
        use_patch(monkeypatch, patch.name, patched=False)


def test_apply_installs_every_patch_and_can_run_again(monkeypatch):
    monkeypatch.delenv(CHECK_VARIABLE, raising=False)
    unpatch_all(monkeypatch)
    faust_patches.apply({"bootstrap.servers": "127.0.0.1:1"})
    faust_patches.apply({"bootstrap.servers": "127.0.0.1:1"}, 4 << 20)  # guard checks upstream
    assert faust_patches._fetch_max_bytes == 4 << 20
    targets = [target for patch in faust_patches.PATCHES for target in patch.targets]
    assert all(getattr(t.owner, t.name) is not t.upstream for t in targets)
    assert len({(t.owner, t.name) for t in targets}) == len(targets) == 10


def test_guard_refuses_a_changed_upstream_function_naming_the_patch(monkeypatch, caplog):
    monkeypatch.delenv(CHECK_VARIABLE, raising=False)
    unpatch_all(monkeypatch)
    flush = faust_patches._BUFFER_FLUSH
    installed_sha256 = flush.sha256
    monkeypatch.setattr(flush, "sha256", "0" * 64)  # as if ProducerBuffer.flush had changed

    with pytest.raises(FaustPatchMismatch) as refused:
        faust_patches.apply({})
    message = str(refused.value)
    assert (
        "patch_changelog_buffer_flush: faust.transport.producer.ProducerBuffer.flush: "
        f"expected source sha256 {'0' * 64}, found {installed_sha256}"
    ) in message
    assert f"{CHECK_VARIABLE}=warn" in message
    assert ProducerBuffer.flush is flush.upstream  # refused before patching anything

    monkeypatch.setenv(CHECK_VARIABLE, "warn")
    with caplog.at_level(logging.WARNING, logger=faust_patches.__name__):
        faust_patches.apply({})
    assert "patch_changelog_buffer_flush: faust.transport.producer.ProducerBuffer.flush" in (
        caplog.text
    )
    assert ProducerBuffer.flush is faust_patches._flush  # patched anyway


def test_guard_refuses_another_version(monkeypatch):
    monkeypatch.delenv(CHECK_VARIABLE, raising=False)
    monkeypatch.setitem(faust_patches.UPSTREAM_VERSIONS, "aiokafka", "0.0.1")
    with pytest.raises(
        FaustPatchMismatch, match=r"aiokafka: expected version 0\.0\.1, found 0\.14\.0"
    ):
        faust_patches.check_upstream()


def test_guard_rejects_an_unknown_override(monkeypatch):
    monkeypatch.setenv(CHECK_VARIABLE, "off")
    with pytest.raises(ValueError, match=f"{CHECK_VARIABLE}='off'"):
        faust_patches.check_upstream()


# -- patch_changelog_buffer_flush


class SlowClient:
    """The producer's channel, whose first record takes 0.3 s to reach the Kafka client."""

    def __init__(self) -> None:
        self.published = 0
        self.first_sent = asyncio.Event()

    async def publish_message(self, fut: Any, wait: bool) -> None:
        if not self.published:
            await self.first_sent.wait()
        self.published += 1


async def records_handed_over_when_flush_returns() -> int:
    client = SlowClient()
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    await buffer.start()
    for _ in range(3):  # table changelog records
        buffer.put(SimpleNamespace(message=SimpleNamespace(channel=client)))  # type: ignore[arg-type]
    asyncio.get_running_loop().call_later(0.3, client.first_sent.set)
    await asyncio.wait_for(buffer.flush(), timeout=5)
    handed_over = client.published
    while client.published < 3:  # let the upstream buffer finish before it stops
        await asyncio.sleep(0.01)
    await buffer.stop()
    return handed_over


def test_changelog_buffer_flush_returns_once_every_record_reached_the_client(monkeypatch):
    use_patch(monkeypatch, "patch_changelog_buffer_flush", patched=False)
    assert asyncio.run(records_handed_over_when_flush_returns()) == 0  # offsets commit now
    use_patch(monkeypatch, "patch_changelog_buffer_flush", patched=True)
    assert asyncio.run(records_handed_over_when_flush_returns()) == 3


# -- patch_true_high_watermarks

CHANGELOG = TP("faust-patches-test-totals-changelog", 0)
LAST_OFFSET = 884  # of the changelog's records; the embedded broker reports 880


class TansuConsumer:
    """aiokafka's consumer as the embedded broker answers it: a partition's end offset is
    the base offset of its last record batch, not the offset after its last record."""

    async def end_offsets(self, partitions: list[TP]) -> dict[TP, int]:
        return {tp: 880 for tp in partitions}


class ProbeRecord:
    def __init__(self, tp: TP, offset: int) -> None:
        self.tp, self._offset = tp, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self.tp.topic

    def partition(self) -> int:
        return self.tp.partition

    def offset(self) -> int:
        return self._offset


class PartitionEof:
    def code(self) -> int:
        return confluent_kafka.KafkaError._PARTITION_EOF


class EofRecord(ProbeRecord):
    def error(self) -> PartitionEof:  # type: ignore[override]
        return PartitionEof()


class ProbeConsumer:
    """confluent-kafka's consumer on that broker: records from the assigned offsets on, then
    each partition's end signal; the first ``silent_polls`` polls answer nothing (a loaded
    broker's first fetch)."""

    silent_polls = 0

    def __init__(self, config: dict[str, Any]) -> None:
        assert config["enable.partition.eof"] is True
        self.unread: list[ProbeRecord] = []

    def assign(self, partitions: list[confluent_kafka.TopicPartition]) -> None:
        for p in partitions:
            tp = TP(p.topic, p.partition)
            self.unread += [ProbeRecord(tp, off) for off in range(p.offset, LAST_OFFSET + 1)]
            self.unread.append(EofRecord(tp, LAST_OFFSET + 1))

    def consume(self, num_messages: int, timeout: float) -> list[ProbeRecord]:
        if self.silent_polls:
            self.silent_polls -= 1
            time.sleep(timeout)
            return []
        batch, self.unread = self.unread[:num_messages], self.unread[num_messages:]
        return batch

    def close(self) -> None:
        pass


async def changelog_high_watermark() -> int:
    thread = unstarted_app().consumer._thread
    thread._consumer = TansuConsumer()  # type: ignore[assignment]
    return (await thread._highwaters([CHANGELOG]))[CHANGELOG]


def test_true_high_watermarks_cover_the_last_changelog_batch(monkeypatch):
    monkeypatch.setattr(faust_patches, "_client_config", {"bootstrap.servers": "127.0.0.1:1"})
    monkeypatch.setattr(confluent_kafka, "Consumer", ProbeConsumer)
    use_patch(monkeypatch, "patch_true_high_watermarks", patched=False)
    # Recovery restores up to the watermark: records 880-884 would never be restored.
    assert asyncio.run(changelog_high_watermark()) == 880
    use_patch(monkeypatch, "patch_true_high_watermarks", patched=True)
    assert asyncio.run(changelog_high_watermark()) == LAST_OFFSET + 1
    # A broker that takes 0.8 s to answer the first fetch: the ends are still found.
    monkeypatch.setattr(ProbeConsumer, "silent_polls", 8)
    assert asyncio.run(changelog_high_watermark()) == LAST_OFFSET + 1


# -- patch_seek_streams_before_resume

STREAM = TP("faust-patches-test-input", 0)
COMMITTED, END = 10, 20  # of the stream partition


class RecoveringConsumer:
    """Faust's consumer at the end of recovery, with its fetch loop: whenever the event loop
    runs, it hands the next record of each active stream partition to the agent's queue."""

    def __init__(self) -> None:
        self.active = {CHANGELOG}  # the stream partition is paused during recovery
        self.position = COMMITTED  # where the client reads the stream partition next
        self._read_offset: dict[TP, int | None] = {}
        self._committed_offset: dict[TP, int | None] = {}

    def assignment(self) -> set[TP]:
        return {STREAM, CHANGELOG}

    def pause_partitions(self, tps: set[TP]) -> None:
        self.active -= set(tps)

    def resume_partitions(self, tps: set[TP]) -> None:
        self.active |= set(tps)

    async def seek_to_committed(self) -> dict[TP, int]:
        await asyncio.sleep(0)  # a call into the consumer thread
        self.position = COMMITTED
        return {STREAM: COMMITTED}

    perform_seek = faust_consumer.Consumer.perform_seek  # faust's own

    def resume_flow(self) -> None:
        pass

    async def fetch_loop(self, queue: FlowControlQueue[int]) -> None:
        while self.position < END:
            if STREAM in self.active:
                queue.put_nowait(self.position)
                self.position += 1
            await asyncio.sleep(0)


class RunningFetcher:
    async def maybe_start(self) -> None:
        pass  # already running: RecoveringConsumer.fetch_loop


async def stream_records_never_queued(end_of_recovery: str) -> set[int]:
    app = unstarted_app()
    app.Table("totals", default=int)  # its changelog partition is CHANGELOG
    consumer = RecoveringConsumer()
    app.consumer = consumer  # type: ignore[assignment]
    app._fetcher = RunningFetcher()  # type: ignore[assignment]
    queue: FlowControlQueue[int] = FlowControlQueue(
        flow_control=app.flow_control, clear_on_resume=True
    )
    fetching = asyncio.ensure_future(consumer.fetch_loop(queue))
    await getattr(Recovery, end_of_recovery)(app.tables.recovery, 0)
    await asyncio.wait_for(fetching, timeout=5)
    return set(range(COMMITTED, END)) - set(queue._queue)  # type: ignore[attr-defined]


@pytest.mark.parametrize("end_of_recovery", ["_resume_streams", "on_recovery_completed"])
def test_stream_partitions_resume_from_their_committed_offsets(monkeypatch, end_of_recovery):
    use_patch(monkeypatch, "patch_seek_streams_before_resume", patched=False)
    # Queued during the seek, then cleared by the flow-control resume; position past them.
    lost = asyncio.run(stream_records_never_queued(end_of_recovery))
    assert COMMITTED in lost  # {10, 11}: how many depends on the fake's pace
    use_patch(monkeypatch, "patch_seek_streams_before_resume", patched=True)
    assert asyncio.run(stream_records_never_queued(end_of_recovery)) == set()


class RevokedDuringSeek(RecoveringConsumer):
    """A rebalance revokes the stream partition while the consumer thread seeks it."""

    async def seek_to_committed(self) -> dict[TP, int]:
        await asyncio.sleep(0)
        raise IllegalStateError(f"No current assignment for partition {STREAM}")


def test_partitions_revoked_during_the_seek_end_this_recovery_without_resuming(monkeypatch):
    use_patch(monkeypatch, "patch_seek_streams_before_resume", patched=True)
    app = unstarted_app()
    app.Table("totals", default=int)
    consumer = RevokedDuringSeek()
    app.consumer = consumer  # type: ignore[assignment]
    recovery = app.tables.recovery
    assert asyncio.run(faust_patches._seek_then_resume(recovery, 0)) is False
    assert STREAM not in consumer.active  # still paused: the next recovery resumes it
    assert not recovery.completed.is_set()


# -- patch_active_partitions_snapshot


class FetchedBatch(Iterator[ConsumerRecord[bytes, bytes]]):
    """The records of one fetch response, as aiokafka's PartitionRecords yields them."""

    def __init__(self, tp: TP, offsets: range) -> None:
        self.next_fetch_offset = offsets.start
        self._records = iter(
            ConsumerRecord(tp.topic, tp.partition, o, 0, 0, b"k", b"v", None, 1, 1, [])
            for o in offsets
        )

    def __next__(self) -> ConsumerRecord[bytes, bytes]:
        record = next(self._records)
        self.next_fetch_offset = record.offset + 1
        return record


async def fetch_as_recovery_pauses_the_changelog() -> tuple[list[int], int]:
    """What faust's getmany delivered, and the client's position in the stream partition."""
    consumer = unstarted_app().consumer
    subscriptions = SubscriptionState()
    subscriptions.assign_from_user({STREAM, CHANGELOG})
    subscriptions.seek(STREAM, COMMITTED)
    subscriptions.seek(CHANGELOG, 0)
    # aiokafka's fetcher without its network side: records arrive below, as a response.
    fetcher = Fetcher.__new__(Fetcher)
    fetcher._loop = asyncio.get_running_loop()
    fetcher._subscriptions = subscriptions
    fetcher._records = OrderedDict()
    fetcher._fetch_waiters = set()
    fetcher._wait_consume_future = None
    fetcher._closed = False
    client = SimpleNamespace(_fetcher=fetcher, _closed=False)

    async def getmany(active_partitions: set[TP], timeout: float) -> Any:
        return await consumer._thread._fetch_records(client, active_partitions, timeout=timeout)

    consumer._getmany = getmany  # type: ignore[method-assign]  # the thread hop, inline
    consumer._set_active_tps({STREAM, CHANGELOG})
    consumer.pause_partitions({STREAM})  # recovery: only the changelog is read
    delivered: list[int] = []

    async def drain() -> None:
        async for _, message in consumer.getmany(timeout=0.3):
            delivered.append(message.offset)

    draining = asyncio.ensure_future(drain())
    while not fetcher._fetch_waiters:  # until it waits for changelog records
        await asyncio.sleep(0)
    consumer.pause_partitions({CHANGELOG})  # recovery is done with it
    assignment = subscriptions.subscription.assignment
    fetcher._records[STREAM] = FetchResult(
        STREAM,
        assignment=assignment,
        partition_records=FetchedBatch(STREAM, range(10, 15)),
        backoff=0,
    )
    for waiter in list(fetcher._fetch_waiters):  # as aiokafka's fetch routine wakes them
        fetcher._notify(waiter)
    await draining
    return delivered, assignment.state_value(STREAM).position


def test_fetch_while_recovery_pauses_every_partition_takes_no_records(monkeypatch):
    use_patch(monkeypatch, "patch_active_partitions_snapshot", patched=False)
    # Records 10-14 were taken from the client and dropped: the next fetch starts at 15.
    assert asyncio.run(fetch_as_recovery_pauses_the_changelog()) == ([], 15)
    use_patch(monkeypatch, "patch_active_partitions_snapshot", patched=True)
    assert asyncio.run(fetch_as_recovery_pauses_the_changelog()) == ([], COMMITTED)


# -- patch_skip_seek_to_unknown_offset


async def seek_standbys_added_by_a_rebalance() -> dict[TP, int]:
    app = unstarted_app()
    table = app.Table("totals", default=int)
    recovery = app.tables.recovery
    recovery.standby_offsets[A] = 41  # a standby partition already being built
    recovery.add_standby(table, A)
    recovery.add_standby(table, CHANGELOG)  # new, its start not built yet: None
    consumer = SeekRecorder()
    await Recovery._seek_offsets(
        recovery, consumer, recovery.standby_tps, recovery.standby_offsets, "standby"
    )
    return consumer.sought


def test_standby_partitions_with_no_offset_yet_do_not_crash_the_seek(monkeypatch):
    use_patch(monkeypatch, "patch_skip_seek_to_unknown_offset", patched=False)
    with pytest.raises(ValueError, match="Offset must be a positive integer"):
        asyncio.run(seek_standbys_added_by_a_rebalance())
    use_patch(monkeypatch, "patch_skip_seek_to_unknown_offset", patched=True)
    assert asyncio.run(seek_standbys_added_by_a_rebalance()) == {A: 41}


# -- patch_worker_fetch


async def fetch_limits() -> tuple[int, int]:
    app = unstarted_app()
    client = app.consumer._thread._create_worker_consumer(app.transport)
    await client.stop()  # never started
    # Its fetcher's max_wait_time and fetch_max_bytes, once started.
    return client._fetch_max_wait_ms, client._fetch_max_bytes


def test_worker_fetches_wait_50_ms_and_ask_for_the_configured_bytes(monkeypatch):
    use_patch(monkeypatch, "patch_worker_fetch", patched=False)
    assert asyncio.run(fetch_limits()) == (1500, 50 << 20)
    monkeypatch.setattr(faust_patches, "_fetch_max_bytes", 256 << 10)
    use_patch(monkeypatch, "patch_worker_fetch", patched=True)
    assert asyncio.run(fetch_limits()) == (faust_patches.FETCH_MAX_WAIT_MS, 256 << 10)
    assert faust_patches.FETCH_MAX_WAIT_MS == 50
