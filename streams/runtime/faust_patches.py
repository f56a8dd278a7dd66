"""Fixes and tuning of faust-streaming 0.15 and aiokafka internals their settings do not expose.

Each ``patch_*`` function below (and in ``faust_handover``, for how fetched records reach
the agents and how their acknowledgements count) replaces private faust-streaming or
aiokafka functions; its docstring names the upstream defect and what breaks without it.
``apply()`` installs them in order. docs/faust-patches.md describes each with the test
that reproduces its defect.

Start-up guard: before patching, ``apply()`` checks that the installed faust-streaming and
aiokafka are the versions in ``UPSTREAM_VERSIONS`` and that every function a patch replaces
still has the source the patch was written against (the SHA-256 of ``inspect.getsource``,
recorded with each target). On a mismatch it raises ``FaustPatchMismatch``, naming the
patch, the target and the expected and found values, and the worker does not start. The
environment variable ``MTA_FAUST_PATCH_CHECK`` overrides: ``strict`` (the default) refuses,
``warn`` logs the mismatch as a warning and patches anyway. After an upgrade, review each
patch named against the new upstream source, then record the new versions and hashes.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import os
import time
from importlib import metadata
from typing import Any

from aiokafka.errors import IllegalStateError
from faust.tables.recovery import Recovery
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.producer import ProducerBuffer

from streams.runtime import faust_handover  # noqa: F401  (registers the hand-over patches)
from streams.runtime.faust_patch_registry import PATCHES, Target, registers

FETCH_MAX_WAIT_MS = 50
#: The size of a worker's fetches (``MTA_FETCH_MAX_BYTES``), set by ``apply()``.
_fetch_max_bytes = 1 << 20

#: The distributions the patches were written for (checked by ``apply()``).
UPSTREAM_VERSIONS = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}

#: ``strict`` (default): refuse to start on a mismatch; ``warn``: log it and patch anyway.
CHECK_VARIABLE = "MTA_FAUST_PATCH_CHECK"

log = logging.getLogger(__name__)


_client_config: dict[str, Any] = {}


class FaustPatchMismatch(RuntimeError):
    """Installed faust-streaming or aiokafka is not what the patches were written for."""


_SEND_PENDING = Target(
    ProducerBuffer,
    "_send_pending",
    "4a9d5f932b56bc6842151bfc868aec1570d53cab7ff129ece408d966ac7f7da8",
)
_BUFFER_FLUSH = Target(
    ProducerBuffer, "flush", "26fbebb124ad9c9890f19b4615585cf3eda102b61203e6aa885d3fabfda9b157"
)
_HIGHWATERS = Target(
    AIOKafkaConsumerThread,
    "_highwaters",
    "a7f4f97d9f32aca2777713e22671d70eae4b3ae51541bb09a90448ce83acefce",
)
_RESUME_STREAMS = Target(
    Recovery, "_resume_streams", "d986a6710c1aca98f08c4c723fb3eadc5bf24576ad4eb9da3dd3eecedda2f24e"
)
_RECOVERY_COMPLETED = Target(
    Recovery,
    "on_recovery_completed",
    "6ef567acf072e46da3fccbccc6d662371f634f622c3d510972d5df81f70ae3ac",
)
_FETCH_RECORDS = Target(
    AIOKafkaConsumerThread,
    "_fetch_records",
    "39a2c6c79fc1455a199629912b533458a720c64983bc957420a42feef6593baa",
)
_SEEK_OFFSETS = Target(
    Recovery, "_seek_offsets", "19598ca63d94d250e49d2dfe48a3c48ecbdf65ee4f1a2871abda51d28b335e55"
)
_WORKER_CONSUMER = Target(
    AIOKafkaConsumerThread,
    "_create_worker_consumer",
    "c2701bfc3e6f6cad95c2be36d6a255a86e2c57d18d36cc1082b5fb5c482d99d7",
)


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


@registers(_SEND_PENDING, _BUFFER_FLUSH)
def patch_changelog_buffer_flush() -> None:
    """Lost table updates: the changelog buffer's flush waits for every record it took.

    Before committing offsets Faust flushes its producer, but the buffer that holds table
    changelog records (``ProducerBuffer.flush``) gives up as soon as one record takes over
    0.1 s to hand over, and does not count the record being handed over. Under load offsets
    were committed while changelog records still waited in the buffer; a crash then lost
    those state changes for good (lost deliveries in tests/e2e/test_crash_recovery.py under
    load). Here the flush waits until every record it took has reached the Kafka client,
    whose own flush Faust awaits next."""
    _SEND_PENDING.replace(_send_pending)
    _BUFFER_FLUSH.replace(_flush)


_PROBE = {"group.id": "mta-hw-probe", "enable.auto.commit": False, "enable.partition.eof": True}


def _true_ends(reported: dict[Any, int], wait_s: float = 30.0) -> dict[Any, int]:
    """The offset after the last record of each partition, read from the reported end up to
    the client's end-of-partition signal (a loaded broker can take seconds to answer)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    ends = dict(reported)
    probe = Consumer({**_client_config, **_PROBE})
    by_key = {(tp.topic, tp.partition): tp for tp in reported}
    open_ = set(by_key)
    try:
        probe.assign([TopicPartition(tp.topic, tp.partition, hw) for tp, hw in reported.items()])
        deadline = time.monotonic() + wait_s
        while open_ and time.monotonic() < deadline:
            for msg in probe.consume(1000, timeout=0.1):
                key = (msg.topic(), msg.partition())
                error = msg.error()
                if error is None:
                    ends[by_key[key]] = max(ends[by_key[key]], msg.offset() + 1)
                elif error.code() == KafkaError._PARTITION_EOF:
                    open_.discard(key)
    finally:
        probe.close()
    if open_:  # recovery then stops short of these partitions' last records
        log.warning("changelog ends not confirmed within %s s: %s", wait_s, sorted(open_))
    return ends


async def _highwaters(self: AIOKafkaConsumerThread, partitions: Any) -> Any:
    reported = dict(await _HIGHWATERS.upstream(self, partitions))
    if not _client_config or not reported:
        return reported
    return await asyncio.get_running_loop().run_in_executor(None, _true_ends, reported)


@registers(_HIGHWATERS)
def patch_true_high_watermarks() -> None:
    """Lost table state after a restart on the embedded broker: true changelog ends.

    Tansu reports a partition's high watermark as the base offset of its last record batch,
    not the offset after its last record (seen: watermark 880 with records up to 884). Faust
    restores a table's changelog up to that watermark, so the last batch of changes was
    never restored while the offsets of the inputs that made them were committed. High
    watermarks are therefore checked by reading what lies at and after the reported one,
    with the client configuration given to ``apply()`` (Apache Kafka reports the true end,
    where this finds nothing and changes nothing)."""
    _HIGHWATERS.replace(_highwaters)


async def _seek_then_resume(self: Recovery, generation_id: int) -> bool:
    """Seek paused stream partitions to their committed offsets, then resume them with the
    read offsets set and the queues cleared at once; False when a rebalance intervened."""
    app, consumer = self.app, self.app.consumer
    streams = {tp for tp in consumer.assignment() if not self._is_changelog_tp(tp)}
    committed: dict[Any, Any] = {}
    if streams:
        consumer.pause_partitions(streams)
        self.log.info("Seek stream partitions to committed offsets.")
        try:
            committed = dict(
                await asyncio.wait_for(
                    consumer.seek_to_committed(), timeout=app.conf.broker_request_timeout
                )
            )
        except IllegalStateError:
            # A rebalance revoked partitions while the seek ran: as Faust's own recovery
            # loop, treat it as the next rebalance (which recovers again), not a crash.
            self.log.warning("Recovery rebalancing again: partitions revoked during the seek")
            return False
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


@registers(_RESUME_STREAMS, _RECOVERY_COMPLETED)
def patch_seek_streams_before_resume() -> None:
    """Skipped input after a restart or rebalance: streams are sought while still paused.

    When recovery ends, Faust resumes the stream partitions first and then seeks them to
    their committed offsets, awaiting the seek; meanwhile its fetch loop hands records from
    the committed position to the agents' queues, and the flow-control ``resume`` that
    follows clears those queues. The consumer's position is by then past the cleared
    records, so they were never processed, and the next record's offset "gap" was counted
    as acknowledged and committed (17 records lost per partition after every SIGKILL in
    tests/e2e/test_crash_recovery.py). Here the seek happens while the stream partitions
    are still paused, and resuming them, resetting the read offsets and clearing the queues
    is one step with no await in between."""
    _RESUME_STREAMS.replace(_resume_streams)
    _RECOVERY_COMPLETED.replace(_on_recovery_completed)


async def _fetch_records(
    self: AIOKafkaConsumerThread,
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
    return await _FETCH_RECORDS.upstream(
        self, consumer, snapshot, timeout=timeout, max_records=max_records
    )


@registers(_FETCH_RECORDS)
def patch_active_partitions_snapshot() -> None:
    """Records dropped at the end of recovery: fetches get a snapshot of active partitions.

    Faust hands its live set of active partitions to the consumer thread, and aiokafka
    reads it each time it wakes up while waiting for records. When recovery paused the
    changelog partitions the set became empty, which aiokafka takes for "every partition":
    the paused stream partitions' buffered records were returned, Faust dropped them as not
    active, and the consumer's position had moved past them (seen: hundreds of input
    records per partition skipped after a restart under CPU load, then committed as an
    offset gap). The thread now gets a snapshot, and none when it is empty."""
    _FETCH_RECORDS.replace(_fetch_records)


async def _seek_offsets(self: Recovery, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
    """Faust's seek of changelog partitions to where their reading starts, without the
    partitions whose start is not known yet (None; see below)."""
    new_offsets = {}
    for tp in list(tps):
        offset = offsets[tp]
        if offset is not None:
            new_offsets[tp] = 0 if offset == -1 else offset
    await consumer.seek_wait(new_offsets)


@registers(_SEEK_OFFSETS)
def patch_skip_seek_to_unknown_offset() -> None:
    """A worker crashed by a rebalance during recovery: no seek to an unknown offset.

    A rebalance during recovery adds the new assignment's standby partitions with no known
    offset (None) until the next recovery builds them, and the recovery still running
    sought them there: aiokafka's ``seek(tp, None)`` raised ``ValueError: Offset must be a
    positive integer`` and the worker crashed (once in the rebalance test). Those
    partitions are left to the recovery that rebalance starts."""
    _SEEK_OFFSETS.replace(_seek_offsets)


def _create_worker_consumer(self: AIOKafkaConsumerThread, transport: Any) -> Any:
    consumer = _WORKER_CONSUMER.upstream(self, transport)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
    consumer._fetch_max_bytes = _fetch_max_bytes
    return consumer


@registers(_WORKER_CONSUMER)
def patch_worker_fetch() -> None:
    """Feedback latency and memory (tuning): a 50 ms maximum fetch wait instead of 1.5 s,
    and fetches of at most ``MTA_FETCH_MAX_BYTES`` instead of 50 MB.

    faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` hard-coded. The
    broker may hold a fetch that long when a partition is idle, and each agent hop pays it:
    the feedback path (input → signal → control record) has two hops, so a throttle change
    took 1.2 s at the median. A short wait costs a few more empty fetches, nothing else.
    faust has no setting for the fetch's total size either: with aiokafka's 50 MB, a worker
    with a backlog held tens of thousands of fetched records at once, and that heap stayed
    its high-water mark."""
    _WORKER_CONSUMER.replace(_create_worker_consumer)


def _source_sha256(function: Any) -> str:
    if function is None:
        return "no such attribute"
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return "no source"
    return hashlib.sha256(source.encode()).hexdigest()


def _mismatches() -> list[str]:
    found: list[str] = []
    for package, expected in UPSTREAM_VERSIONS.items():
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "not installed"
        if version != expected:
            found.append(f"all patches: {package}: expected version {expected}, found {version}")
    for patch in PATCHES:
        for target in patch.targets:
            sha256 = _source_sha256(target.upstream)
            if sha256 != target.sha256:
                found.append(
                    f"{patch.name}: {target.path}: expected source sha256 {target.sha256}, "
                    f"found {sha256}"
                )
    return found


def check_upstream() -> None:
    """Raise ``FaustPatchMismatch`` (or only log it, with ``MTA_FAUST_PATCH_CHECK=warn``)
    when faust-streaming or aiokafka is not what the patches were written for."""
    mode = os.environ.get(CHECK_VARIABLE, "strict").strip().lower()
    if mode not in ("strict", "warn"):
        raise ValueError(f"{CHECK_VARIABLE}={mode!r}: must be strict or warn")
    found = _mismatches()
    if not found:
        return
    message = "\n".join(
        [
            "faust-streaming/aiokafka differ from what streams/runtime/faust_patches.py "
            "was written for:",
            *(f"  {line}" for line in found),
            "Review each patch named against the installed source (docs/faust-patches.md), "
            "then record the found versions and hashes in streams/runtime/faust_patches.py "
            "and faust_handover.py; "
            f"{CHECK_VARIABLE}=warn starts the worker anyway, with this as a warning.",
        ]
    )
    if mode == "warn":
        log.warning("%s", message)
        return
    raise FaustPatchMismatch(message)


def apply(client_config: dict[str, Any], fetch_max_bytes: int = 1 << 20) -> None:
    """Check upstream (``check_upstream``), then install the patches in order; idempotent,
    affects this process's Faust apps only.

    ``client_config`` is the confluent-kafka configuration (bootstrap servers and security)
    used to check high watermarks; ``fetch_max_bytes`` the size of the workers' fetches."""
    global _fetch_max_bytes
    check_upstream()
    _fetch_max_bytes = fetch_max_bytes
    _client_config.clear()
    _client_config.update(client_config)
    for patch in PATCHES:
        patch.install()
